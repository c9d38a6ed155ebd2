"""tiered_serving.model_source: the model_source forms, and the sha256 check."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from tiered_serving.model_source import ModelSourceError, resolve, sha256_of, verify_sha256


def gguf(path: Path, content: bytes = b"GGUF...") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_file_a_file_url_and_a_directory_with_one_gguf(tmp_path: Path) -> None:
    model = gguf(tmp_path / "models" / "m.gguf")
    (tmp_path / "models" / "README.md").write_text("not a model")
    assert resolve(str(model)) == model
    assert resolve(f"file://{model}") == model
    assert resolve(str(tmp_path / "models")) == model


def test_a_directory_must_hold_exactly_one_gguf(tmp_path: Path) -> None:
    gguf(tmp_path / "a.gguf")
    gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelSourceError, match=r"exactly one \.gguf file, found a\.gguf, b\.gguf"):
        resolve(str(tmp_path))
    with pytest.raises(ModelSourceError, match="found none"):
        resolve(str(tmp_path / "empty")) if (tmp_path / "empty").mkdir() is None else None


def test_missing_files_and_remote_schemes_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such file"):
        resolve(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelSourceError, match=r"local files only .* not s3://"):
        resolve("s3://bucket/m.gguf")


def test_a_gguf_shipped_by_a_python_package_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "weights_pkg"
    model = gguf(package / "tiny.gguf")
    # Importing the package would fail: resolve must only locate it.
    (package / "__init__.py").write_text("raise ImportError('heavy dependency missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert resolve("pkg://weights_pkg/tiny.gguf") == model
    assert resolve("pkg://weights_pkg/.") == model  # a directory inside the package with one GGUF
    assert "weights_pkg" not in sys.modules
    with pytest.raises(ModelSourceError, match=r"has no file 'other\.gguf'"):
        resolve("pkg://weights_pkg/other.gguf")
    with pytest.raises(ModelSourceError, match="'no_such_pkg' is not installed"):
        resolve("pkg://no_such_pkg/m.gguf")
    with pytest.raises(ModelSourceError, match="expected pkg://<python package>/<file>"):
        resolve("pkg://weights_pkg")


def test_sha256_is_checked_case_insensitively_and_a_mismatch_names_both(tmp_path: Path) -> None:
    model = gguf(tmp_path / "m.gguf", b"weights" * 1000)
    digest = hashlib.sha256(b"weights" * 1000).hexdigest()
    assert sha256_of(model) == digest
    verify_sha256(model, digest.upper())
    with pytest.raises(ModelSourceError, match=f"expected {'0' * 64}, file has {digest}"):
        verify_sha256(model, "0" * 64)
