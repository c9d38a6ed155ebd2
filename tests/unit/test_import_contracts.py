"""`make lint`'s import contracts bite: a product module that imports the test bed fails `lint-imports`.

Runs the real `lint-imports` on a copy of the sources and pyproject.toml in a tmp dir (PYTHONPATH points at
the copies, so the checkout is never touched): the unmodified copy keeps every contract, and the same copy
with `import tiered_devstack` added to one product module breaks the no-test-bed contract by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("operator", "router", "serving", "devstack")
CONTRACT = "The product never imports the local test bed"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(sources: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(sources / name) for name in PACKAGES)
    # No cache: grimp would otherwise keep a graph under .import_linter_cache in the tmp copy anyway.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], capture_output=True, text=True, cwd=sources,
                          env={**os.environ, "PYTHONPATH": path}, timeout=300)


def test_the_unmodified_copy_keeps_the_contracts(sources: Path) -> None:
    result = lint_imports(sources)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CONTRACT} KEPT" in result.stdout


def test_a_product_module_importing_the_test_bed_breaks_the_contract(sources: Path) -> None:
    module = sources / "operator" / "tiered_operator" / "cli" / "commands.py"
    module.write_text(module.read_text() + "\nimport tiered_devstack  # noqa: E402,F401\n")
    result = lint_imports(sources)
    assert result.returncode != 0
    assert f"{CONTRACT} BROKEN" in result.stdout
    assert "tiered_operator.cli.commands -> tiered_devstack" in result.stdout
