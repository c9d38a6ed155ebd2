"""Learned routing decision time: embed + score + choose a tier, for one request, on one core.

What the router does per `model: auto` request with a classifier rule (tiered_router.scoring.route_signals
then tiered_router.policy.choose_tier), in process, pinned to one core, the embedding cache off (a repeated
prompt would be a cache hit: that row is shown apart). Prompts are natural text from the held-out split cut
to 16, 64 and 128 tokens (the encoder's count, [CLS]/[SEP] included). Goal: p95 ≤ 10 ms at 128 tokens.

Run: `.venv/bin/python bench/routing_decision.py`; bounded: ROUNDS decisions per length.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from tiered_devstack.routing_data import HELD_OUT_FILES, load_labelled
from tiered_router.config import RouterConfig
from tiered_router.policy import LiveState, RequestFeatures, choose_tier, estimate_tokens
from tiered_router.scoring import Embedder, route_signals, routing_models

ROUNDS = 300
LENGTHS = (16, 64, 128)


def config(cache_entries: int) -> RouterConfig:
    local = {"gpuHourUSD": 1.0, "tokensPerSecond": 100}
    return RouterConfig.model_validate(
        {
            "tiers": [
                {"name": "small", "baseURL": "http://127.0.0.1:1/v1", "pricing": local},
                {
                    "name": "frontier",
                    "kind": "external",
                    "baseURL": "http://127.0.0.1:2/v1",
                    "pricing": {"inputPerMTok": 2, "outputPerMTok": 8},
                },
            ],
            "default": "small",
            "rules": [{"name": "hard", "match": {"classifier": {}}, "tier": "frontier"}],
            "encoder": {"timeoutMs": 10000, "cacheEntries": cache_entries},
        }
    )


def texts_of(tokens: int, embedder: Embedder) -> list[str]:
    """Held-out prompts cut to exactly `tokens` tokens (those long enough), word by word."""
    encoder = embedder.encoder(config(0).encoder)
    out = []
    for row in load_labelled(HELD_OUT_FILES):
        words = row.prompt.split()
        if encoder.count_tokens(row.prompt) < tokens:
            continue
        cut = []
        for word in words:
            if encoder.count_tokens(" ".join([*cut, word])) > tokens:
                break
            cut.append(word)
        out.append(" ".join(cut))
    return out


async def measure(texts: list[str], cache_entries: int) -> list[float]:
    embedder = Embedder(lambda _: None, lambda _: None)
    cfg = config(cache_entries)
    models = routing_models(cfg, embedder)
    assert models is not None
    live = LiveState()
    times = []
    for i in range(ROUNDS):
        text = texts[i % len(texts)]
        started = time.perf_counter()
        signals = await route_signals(models, embedder, text)
        choose_tier(RequestFeatures("auto", estimate_tokens(len(text)), None, text, signals=signals), cfg, live)
        times.append(time.perf_counter() - started)
        assert signals.scores, "no score: the encoder failed"
    embedder.close()
    return times


def row(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return f"  {label:<28}{statistics.median(ms):>8.2f}{pick(0.95):>8.2f}{pick(0.99):>8.2f}"


def main() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    embedder = Embedder(lambda _: None, lambda _: None)
    print(
        f"learned routing decision (route-v1: 64-token message + 32-token tail embeddings), one core, {ROUNDS}"
        " decisions per row, ms"
    )
    print(f"  {'prompt':<28}{'p50':>8}{'p95':>8}{'p99':>8}")
    for tokens in LENGTHS:
        texts = texts_of(tokens, embedder)
        print(row(f"{tokens} tokens ({len(texts)} texts)", asyncio.run(measure(texts, 0))), flush=True)
    texts = texts_of(128, embedder)[:20]
    print(row("128 tokens, cached (20)", asyncio.run(measure(texts, 1000))))
    embedder.close()


if __name__ == "__main__":
    main()
