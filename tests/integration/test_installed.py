"""The built wheel works without the checkout: installed into a fresh venv outside the repo, run from an empty folder.

Builds the wheel from a copy of the sources (so the build leaves nothing in the checkout), creates a venv in
a tmp dir and installs the wheel with pip's warm cache. Without the `devstack` extra, `tiered render -f` on
a copy of `examples/` prints the RayServices and `tiered cluster` names the extra (exit 2); with it,
`tiered cluster` serves the tiered CRDs and KubeRay's RayService CRD from package data, checked with the
pinned kubectl. Step timings are printed (`pytest -s`); speed is not asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tiered_devstack.cluster import KUBECTL, REPO_ROOT, check_kubectl
from tiered_devstack.processes import poll, stop

pytestmark = pytest.mark.integration

SOURCES = ("pyproject.toml", "README.md", "operator", "router", "serving", "devstack")
SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")


class Installed:
    """A venv outside the checkout with the wheel installed; commands run from an empty folder in a clean env."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root, self.wheel = root, wheel
        self.venv = root / "venv"
        self.cwd = root / "empty"
        self.cwd.mkdir()
        self.timings: dict[str, float] = {}

    @property
    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR", "PIP_CACHE_DIR")}
        return {**keep, "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}

    def timed(self, step: str, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.cwd, env=self.env,
                                timeout=600, **kwargs)  # type: ignore[call-overload]
        self.timings[step] = time.monotonic() - start
        return result

    def pip_install(self, step: str, requirement: str) -> None:
        # The outer venv's pip installs into this one (`--python`): no pip inside it, pip's cache reused.
        result = self.timed(step, [sys.executable, "-m", "pip", "--python", str(self.venv / "bin" / "python"),
                                   "install", "--quiet", "--disable-pip-version-check", requirement])
        assert result.returncode == 0, result.stdout + result.stderr

    def tiered(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.timed(f"tiered {args[0]}", [str(self.venv / "bin" / "tiered"), *args])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("installed")
    assert not root.resolve().is_relative_to(REPO_ROOT.resolve())
    start = time.monotonic()
    source = root / "src"
    source.mkdir()
    for name in SOURCES:  # copytree follows symlinks: devstack/tiered_devstack/data/examples becomes files
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=SKIP)
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                            str(source), "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("tiered-*.whl")
    build_seconds = time.monotonic() - start
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    env = Installed(root, wheel)
    env.timings["build wheel"] = build_seconds
    env.pip_install("install wheel", str(wheel))
    yield env
    print("\ninstalled-copy timings: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in env.timings.items()))


def test_the_installed_copy_comes_from_the_venv_not_the_checkout(installed: Installed) -> None:
    code = "import tiered_operator, tiered_devstack, tiered_router; print(tiered_operator.__file__)"
    result = installed.timed("import", [str(installed.venv / "bin" / "python"), "-c", code])
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed.venv)


def test_render_a_copy_of_the_examples_from_an_empty_folder(installed: Installed) -> None:
    examples = shutil.copytree(REPO_ROOT / "examples", installed.root / "examples")
    result = installed.tiered("render", "-f", str(examples))
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    rayservices = sorted(doc["metadata"]["name"] for doc in docs if doc["kind"] == "RayService")
    tiers = sorted(yaml.safe_load(path.read_text())["metadata"]["name"] for path in examples.glob("tier-*.yaml"))
    assert rayservices == tiers


def test_cluster_without_the_extra_names_it(installed: Installed) -> None:
    result = installed.tiered("cluster")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tiered cluster: needs the devstack extra: pip install 'tiered[devstack]'"]


def test_cluster_with_the_extra_serves_the_crds_from_package_data(installed: Installed) -> None:
    check_kubectl()
    installed.pip_install("install [devstack]", f"tiered[devstack] @ {installed.wheel.as_uri()}")
    kubeconfig, log = installed.root / "kubeconfig", installed.root / "cluster.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(installed.venv / "bin" / "tiered"), "cluster", "--kubeconfig", str(kubeconfig)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=installed.cwd, env=installed.env)
    try:
        start = time.monotonic()
        poll(lambda: "kubeconfig:" in log.read_text() or process.poll() is not None or None, timeout=60,
             what="tiered cluster's kubeconfig line")
        installed.timings["cluster start"] = time.monotonic() - start
        assert process.poll() is None, log.read_text()
        assert f"kubeconfig: {kubeconfig}" in log.read_text()
        result = subprocess.run([str(KUBECTL), f"--kubeconfig={kubeconfig}", f"--cache-dir={installed.root / 'kc'}",
                                 "get", "crd", "-o", "name"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert {"customresourcedefinition.apiextensions.k8s.io/inferencetiers.tiered.dev",
                "customresourcedefinition.apiextensions.k8s.io/routingpolicies.tiered.dev",
                "customresourcedefinition.apiextensions.k8s.io/rayservices.ray.io"} <= set(result.stdout.split())
        # KubeRay's full schema, not the minimal stand-in: the vendored file reached the wheel.
        schema = subprocess.run([str(KUBECTL), f"--kubeconfig={kubeconfig}", f"--cache-dir={installed.root / 'kc'}",
                                 "get", "crd", "rayservices.ray.io", "-o",
                                 "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.type}"],
                                capture_output=True, text=True, timeout=60)
        assert schema.stdout == "object", schema.stderr
    finally:
        stop(process)
    assert process.returncode == 0, log.read_text()
