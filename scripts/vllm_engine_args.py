"""Vendor the engine-argument names of the vLLM that Ray Serve LLM pins, for tests/unit/test_render.py.

Ray Serve LLM splits a tier's `engine_kwargs` between vLLM's `AsyncEngineArgs` and `FrontendArgs` and refuses
any other key ("Unknown engine argument"), but only on a GPU node, minutes into a rollout. vLLM itself (CUDA,
> 2 GB installed) cannot be installed here, so this script downloads the vllm wheel alone (`pip download
--no-deps`, ~320 MB, kept in a cache directory), reads the two dataclasses' field names from its source with
`ast` (nothing of vLLM is imported or run), and writes them to a small JSON file that is committed; the
wheel is not.

    .venv/bin/python scripts/vllm_engine_args.py            # the vLLM version installed Ray pins
    .venv/bin/python scripts/vllm_engine_args.py --vllm 0.29.0 --cache /tmp/vllm-wheel
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "tests" / "unit" / "data" / "vllm_engine_args.json"
DEFAULT_CACHE = Path.home() / ".cache" / "tiered" / "vllm-wheel"
# Where vLLM defines the dataclasses Ray Serve LLM reads (ray.llm._internal.serve.engines.vllm.vllm_models).
SOURCES = {
    "engine_args": ("vllm/engine/arg_utils.py", "AsyncEngineArgs"),
    "frontend_args": ("vllm/entrypoints/launchers/cli_args.py", "FrontendArgs"),
}


def pinned_vllm() -> tuple[str, str]:
    """(Ray's version, the vLLM version its `llm` extra pins), from the installed Ray's metadata."""
    for requirement in metadata.requires("ray") or []:
        match = re.match(r"vllm(\[[^\]]*\])?==([^;\s]+)\s*;.*extra == .llm.", requirement)
        if match:
            return metadata.version("ray"), match.group(2)
    raise SystemExit("the installed ray pins no vllm in its llm extra")


def download(version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"vllm=={version}",
             "-d", str(cache)],
            check=True,
        )
        wheels = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip left no vllm {version} wheel in {cache}")
    return wheels[0]


def dataclass_fields(module: ast.Module, class_name: str) -> list[str]:
    """Annotated field names of `class_name` and of its bases defined in the same module, bases first."""
    classes = {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}
    if class_name not in classes:
        raise SystemExit(f"no class {class_name} in the vLLM source: has it moved?")
    node = classes[class_name]
    names: list[str] = []
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            names += dataclass_fields(module, base.id)
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            annotation = ast.unparse(statement.annotation)
            if not annotation.startswith(("ClassVar", "typing.ClassVar")) and statement.target.id not in names:
                names.append(statement.target.id)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", help="vLLM version (default: the one the installed ray pins)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the wheel is kept")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    ray_version, pinned = pinned_vllm()
    version = args.vllm or pinned
    wheel = download(version, args.cache)
    result: dict[str, object] = {"ray": ray_version, "vllm": version}
    with zipfile.ZipFile(wheel) as archive:
        for key, (path, class_name) in SOURCES.items():
            result[key] = sorted(dataclass_fields(ast.parse(archive.read(path)), class_name))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    counts = ", ".join(f"{len(result[key])} {key}" for key in SOURCES)  # type: ignore[arg-type]
    print(f"vLLM {version} (Ray {ray_version}): {counts} → {args.output.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
