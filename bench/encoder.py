"""Encoder benchmark: the router's int8 all-MiniLM-L6-v2 (tiered_router.encoder) on one core.

Prints: the cold build (weights → ONNX → int8, into an empty cache directory), a load from the cache, and
`embed` latency p50/p95/p99 for one text of 16, 64 and 128 tokens and for batches of 8 and 32 texts of 64
tokens, with threads=1 and the process pinned to one CPU; for comparison, one text at 64 and 128 tokens
through the fp32 graph. The machine is shared: each row is the median of three rounds, and the last
column is the thread's CPU time per call, what the latency would be on an idle core.

Every loop is bounded in count. Run: `.venv/bin/python bench/encoder.py [--quick]`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tiered_router.encoder import Encoder, build_float_model, model_dir

TEXT = (
    "the supplier shall deliver the goods described in schedule a in accordance with the delivery timetable "
    "and payment is due within thirty days of the invoice date while late payments accrue interest monthly "
    "either party may terminate this agreement upon sixty days written notice to the other party"
)


def text_of(encoder: Encoder, tokens: int) -> str:
    """A text of at least `tokens` ids ([CLS] and [SEP] included); the table shows the exact count."""
    words: list[str] = []
    while encoder.count_tokens(" ".join(words)) < tokens:
        words.append(TEXT.split()[len(words) % len(TEXT.split())])
    return " ".join(words)


def percentiles(call: Callable[[], object], count: int) -> tuple[float, float, float, float]:
    """Wall-clock p50/p95/p99 and the median CPU time of the calling thread (what contention does not add)."""
    for _ in range(max(3, count // 20)):  # warm-up
        call()
    wall, cpu = [], []
    for _ in range(count):
        started, started_cpu = time.perf_counter(), time.thread_time()
        call()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    wall.sort()
    p50, p95, p99 = (wall[min(len(wall) - 1, int(q * len(wall)))] for q in (0.50, 0.95, 0.99))
    return p50, p95, p99, statistics.median(cpu)


def median_of_rounds(call: Callable[[], object], count: int, rounds: int) -> tuple[float, float, float, float]:
    results = sorted((percentiles(call, count) for _ in range(rounds)), key=lambda row: row[0])
    return results[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # onnxruntime.quantization's advice, on the root logger
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    count = 60 if args.quick else 300
    rounds = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        encoder = Encoder.load(Path(cache), max_tokens=128, threads=1)
        cold = time.perf_counter() - started
        assert encoder.built
        loads = []
        for _ in range(5):
            started = time.perf_counter()
            again = Encoder.load(Path(cache), max_tokens=128, threads=1)
            loads.append(time.perf_counter() - started)
            assert not again.built
        size_mb = encoder.model_path.stat().st_size / 1e6 if encoder.model_path else 0.0

    fp32 = Encoder.from_model(build_float_model(model_dir() / "model.safetensors").SerializeToString(), 128, 1)

    print(f"encoder: all-MiniLM-L6-v2, ONNX Runtime int8 ({size_mb:.1f} MB), threads=1, pinned to CPU {cpu}")
    print(f"cold build (weights → ONNX → int8 → cache): {cold:.2f} s")
    print(f"load from cache: median {statistics.median(loads) * 1000:.0f} ms of {len(loads)}")
    print()
    print(
        f"{'graph':<6} {'input':<16} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ms/text p50':>12} {'CPU ms p50':>11}"
    )
    rows: list[tuple[str, Encoder, int, int, int]] = [
        ("int8", encoder, 16, 1, count),
        ("int8", encoder, 64, 1, count),
        ("int8", encoder, 128, 1, count),
        ("int8", encoder, 64, 8, max(20, count // 5)),
        ("int8", encoder, 64, 32, max(10, count // 15)),
        ("fp32", fp32, 64, 1, count // 2),
        ("fp32", fp32, 128, 1, count // 2),
    ]
    for name, model, tokens, batch, iterations in rows:
        texts = [text_of(model, tokens)] * batch
        p50, p95, p99, cpu_ms = median_of_rounds(functools.partial(model.embed, texts), iterations, rounds)
        label = f"{batch} × {len(model.token_ids(texts[0]))} tokens"
        print(f"{name:<6} {label:<16} {p50:8.2f} {p95:8.2f} {p99:8.2f} {p50 / batch:12.2f} {cpu_ms:11.2f}")


if __name__ == "__main__":
    main()
