"""How well `model: auto` routes: the learned router through a real router process and real upstreams.

1. The never-trained split (`data/routing/cedar.jsonl`): every prompt is sent as `model: auto` to a router
   whose policy is the example's learned rule (classifier → frontier, else the small tier), in front of two
   fake upstream processes (small, frontier); the tier that answered (x-tiered-tier) and the score
   (x-tiered-route-score) are read from the reply. Reported: accuracy, share of frontier-needing prompts
   kept on the small tier, share of small work sent to the frontier, and cost against all-frontier, next to
   always-small, always-frontier, keyword/length rules (the router's own rule engine) and a random router
   sending the same share to the frontier.
2. RouteLLM's MMLU and GSM8K (never trained on): every prompt's score from the same router's
   `/v1/tiered/explain`; APGR and CPT(50/80/95%) as RouteLLM defines them, the deployed threshold's
   operating point, and prompt length and random as references.

Prices (documented, per million tokens): frontier $2.00 in / $8.00 out (the example policy's); small tier
from GPU time, $3.50 per GPU-hour, a quarter GPU per replica, 2,500 tokens/s → $0.097 per million. Each
request is priced at its estimated prompt tokens plus 200 output tokens.

Run: `.venv/bin/python bench/routing_eval.py [--skip-mmlu]`; bounded: one pass over each set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from tiered_devstack import fake_upstream
from tiered_devstack.routing_data import HELD_OUT_FILES, load_labelled, load_routellm, operating_point, routellm_curve
from tiered_router import cost
from tiered_router.config import RouterConfig
from tiered_router.learned import load_head
from tiered_router.policy import LiveState, RequestFeatures, choose_tier, estimate_tokens

OUTPUT_TOKENS = 200
CONCURRENCY = 8
KEYWORD_RULES = [
    # What a careful person writes without a learned router: reasoning, math, law, code design and long
    # prompts to the frontier; the rest stays small.
    {
        "name": "hard-words",
        "tier": "frontier",
        "match": {
            "keywords": [
                "why",
                "explain",
                "analyze",
                "analyse",
                "compare",
                "design",
                "architecture",
                "prove",
                "derive",
                "calculate",
                "how many",
                "how much",
                "strategy",
                "plan",
                "evaluate",
                "enforceable",
                "liability",
                "legal",
                "trade-off",
                "tradeoffs",
                "refactor",
                "migrate",
                "concurrency",
                "race condition",
                "security",
                "optimize",
                "story",
                "essay",
                "reconcile",
                "contradict",
                "should we",
                "recommend",
            ]
        },
    },
    {"name": "long", "tier": "frontier", "match": {"minPromptTokens": 1500}},
]


def config(small: str, frontier: str, rules: list[dict], threshold: float | None) -> dict:
    learned = [{"name": "learned", "tier": "frontier", "match": {"classifier": {}}}]  # the head's threshold
    return {
        "tiers": [
            {
                "name": "small",
                "baseURL": small,
                "pricing": {"gpuHourUSD": 3.5, "gpusPerReplica": 0.25, "tokensPerSecond": 2500},
            },
            {
                "name": "frontier",
                "kind": "external",
                "baseURL": frontier,
                "pricing": {"inputPerMTok": 2.0, "outputPerMTok": 8.0},
            },
        ],
        "default": "small",
        "baseline": "frontier",
        "rules": learned if threshold is not None else rules,
        "encoder": {"timeoutMs": 2000},  # measuring routing quality, not the time budget
    }


def report_split(rows: list, to_frontier: np.ndarray, prices: dict[str, cost.Price]) -> dict[str, float]:
    needs = np.asarray([r.frontier for r in rows])
    tokens = np.asarray([estimate_tokens(len(r.prompt)) for r in rows])
    spent = sum(
        prices["frontier" if f else "small"].cost(int(t), OUTPUT_TOKENS)
        for f, t in zip(to_frontier, tokens, strict=True)
    )
    all_frontier = sum(prices["frontier"].cost(int(t), OUTPUT_TOKENS) for t in tokens)
    return {
        "accuracy": float((to_frontier == needs).mean()),
        "frontier kept small": float((~to_frontier & needs).sum() / max(1, needs.sum())),
        "small sent frontier": float((to_frontier & ~needs).sum() / max(1, (~needs).sum())),
        "to frontier": float(to_frontier.mean()),
        "cost vs all-frontier": spent / all_frontier,
    }


async def post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body, CONCURRENCY at a time (each once: bounded); the replies in order, all 200."""
    replies: list[httpx.Response | None] = [None] * len(bodies)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            replies[i] = (await client.post(path, json=bodies[i])).raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return [r for r in replies if r is not None]


async def through_router(url: str, rows: list) -> np.ndarray:
    """Send every prompt as `model: auto`; whether the frontier tier answered each."""
    bodies = [
        {
            "model": "auto",
            "messages": ([{"role": "system", "content": r.system}] if r.system else [])
            + [{"role": "user", "content": r.prompt}],
            "max_tokens": 16,
        }
        for r in rows
    ]
    replies = await post_all(url, "/v1/chat/completions", bodies)
    assert all("x-tiered-route-score" in r.headers for r in replies), "the classifier did not score (budget?)"
    return np.asarray([r.headers["x-tiered-tier"] == "frontier" for r in replies])


async def explain_scores(url: str, prompts: list[str]) -> np.ndarray:
    bodies = [{"model": "auto", "messages": [{"role": "user", "content": p}]} for p in prompts]
    replies = await post_all(url, "/v1/tiered/explain", bodies)
    return np.asarray([next(iter(r.json()["signals"]["scores"].values())) for r in replies])


def rules_route(rows: list, rules: list[dict], small: str, frontier: str) -> np.ndarray:
    """The router's own rule engine (`choose_tier`) over the same prompts: the keyword baseline."""
    rule_config = RouterConfig.model_validate(config(small, frontier, rules, None))
    live = LiveState()
    return np.asarray(
        [
            choose_tier(RequestFeatures("auto", estimate_tokens(len(r.prompt)), None, r.prompt), rule_config, live).tier
            == "frontier"
            for r in rows
        ]
    )


def table(title: str, rows: dict[str, dict[str, float]]) -> None:
    columns = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"  {'router':<26}" + "".join(f"{c:>22}" for c in columns))
    for name, values in rows.items():
        print(f"  {name:<26}" + "".join(f"{values[c]:>22.3f}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-mmlu", action="store_true", help="GSM8K only (MMLU is 14k prompts)")
    args = parser.parse_args()
    head = load_head("route-v1")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        small_proc, small = fake_upstream.spawn(
            ["-m", "tiered_devstack.fake_upstream", "--name", "small"], tmp / "small.log"
        )
        frontier_proc, frontier = fake_upstream.spawn(
            ["-m", "tiered_devstack.fake_upstream", "--name", "frontier"], tmp / "frontier.log"
        )
        path = tmp / "router.yaml"
        path.write_text(yaml.safe_dump(config(f"{small}/v1", f"{frontier}/v1", [], head.threshold)))
        router_proc, router = fake_upstream.spawn(
            ["-m", "tiered_router.server", "--config", str(path), "--port", "0"], tmp / "router.log", startup=120
        )
        try:
            rows = load_labelled(HELD_OUT_FILES)
            started = time.perf_counter()
            learned = asyncio.run(through_router(router, rows))
            print(
                f"held-out split {HELD_OUT_FILES[0]}: {len(rows)} prompts through the router in "
                f"{time.perf_counter() - started:.1f} s (head {head.version}, threshold {head.threshold})"
            )
            prices = {
                t.name: cost.tier_price(t)
                for t in RouterConfig.model_validate(config(small, frontier, [], head.threshold)).tiers
            }
            share = float(learned.mean())
            random_route = np.random.default_rng(0).random(len(rows)) < share
            results = {
                "learned (route-v1)": report_split(rows, learned, prices),
                "always small": report_split(rows, np.zeros(len(rows), bool), prices),
                "always frontier": report_split(rows, np.ones(len(rows), bool), prices),
                "keyword/length rules": report_split(rows, rules_route(rows, KEYWORD_RULES, small, frontier), prices),
                f"random at {share:.0%} frontier": report_split(rows, random_route, prices),
            }
            table("never-trained split", results)
            traps = sorted({r.trap for r in rows if r.trap})
            by_trap = {
                t: report_split([r for r in rows if r.trap == t], learned[[r.trap == t for r in rows]], prices)
                for t in traps
            }
            table("learned router by trap kind (held-out)", by_trap)

            for name in ("gsm8k",) if args.skip_mmlu else ("gsm8k", "mmlu"):
                bench = load_routellm(name)
                started = time.perf_counter()
                scored = asyncio.run(explain_scores(router, bench.prompts))
                seconds = time.perf_counter() - started
                curves = {
                    "learned (route-v1)": routellm_curve(scored, bench),
                    "prompt length": routellm_curve(np.asarray([len(p) for p in bench.prompts], float), bench),
                    "random": routellm_curve(np.random.default_rng(0).random(len(bench.prompts)), bench),
                }
                print(
                    f"\nRouteLLM {name}: {len(bench.prompts)} prompts scored via /v1/tiered/explain in {seconds:.0f} s"
                    f" (weak {bench.weak.mean():.3f}, strong {bench.strong.mean():.3f})"
                )
                print(f"  {'router':<22}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}{'CPT(95%)':>10}")
                for label, curve in curves.items():
                    print(
                        f"  {label:<22}{curve.apgr:>8.3f}" + "".join(f"{curve.cpt(x):>10.3f}" for x in (0.5, 0.8, 0.95))
                    )
                point = operating_point(scored, bench, head.threshold)
                print(
                    f"  deployed threshold {head.threshold}: " + json.dumps({k: round(v, 3) for k, v in point.items()})
                )
        finally:
            for proc in (router_proc, small_proc, frontier_proc):
                fake_upstream.stop(proc)


if __name__ == "__main__":
    main()
