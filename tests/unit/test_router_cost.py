"""Cost arithmetic and usage parsing, as tables."""

from __future__ import annotations

import json

import pytest
from tiered_router.config import Tier
from tiered_router.cost import CostLedger, Price, Usage, tier_price, usage_from_json, usage_from_sse


@pytest.mark.parametrize(
    ("tier", "input_tokens", "output_tokens", "usd"),
    [
        # external: per million tokens
        ({"kind": "external", "pricing": {"inputPerMTok": 5, "outputPerMTok": 30}}, 1_000_000, 0, 5.0),
        ({"kind": "external", "pricing": {"inputPerMTok": 5, "outputPerMTok": 30}}, 2000, 1000, 0.04),
        # local: 3.6 $/GPU-h x 2 GPUs over 1000 tok/s = 7.2 $ per 3.6M tokens = 2e-6 $/token
        ({"pricing": {"gpuHourUSD": 3.6, "gpusPerReplica": 2, "tokensPerSecond": 1000}}, 1000, 500, 0.003),
        ({"pricing": {"gpuHourUSD": 2.0, "gpusPerReplica": 0.5, "tokensPerSecond": 250}}, 900_000, 0, 1.0),
        ({"pricing": {"gpuHourUSD": 0, "tokensPerSecond": 1}}, 10, 10, 0.0),
    ],
)
def test_prices(tier: dict[str, object], input_tokens: int, output_tokens: int, usd: float) -> None:
    price = tier_price(Tier.model_validate({"name": "t", "baseURL": "http://t/v1", **tier}))
    assert price.cost(input_tokens, output_tokens) == pytest.approx(usd, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (
            b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}',
            Usage(3, 4),
        ),
        (b'{"usage" :  {"prompt_tokens": 1, "completion_tokens": 2}, "choices": []}', Usage(1, 2)),
        (b'{"choices": [{"text": "the \\"usage\\" word"}], "usage": null}', None),
        (b'{"choices": [{"text": "the \\"usage\\" word"}]}', None),
        (b'{"usage": {"prompt_tokens": "3"}}', None),
        (b"not json", None),
    ],
)
def test_usage_from_json(body: bytes, usage: Usage | None) -> None:
    assert usage_from_json(body) == usage


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("tail", "usage"),
    [
        (
            sse(
                {"choices": [{"delta": {"content": "a"}}]},
                {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}},
            ),
            Usage(7, 9),
        ),
        (
            sse(
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
            ),
            Usage(1, 2),
        ),
        (sse({"choices": [{"delta": {"content": "usage"}}], "usage": None}), None),
        (b'ge": {"prompt_tokens": 1}}\n\ndata: [DONE]\n\n', None),  # a cut-off first event is skipped
    ],
)
def test_usage_from_sse(tail: bytes, usage: Usage | None) -> None:
    assert usage_from_sse(tail) == usage


def test_ledger_totals_and_savings() -> None:
    ledger = CostLedger()
    ledger.add(("small", "t", "f"), Usage(10, 20), 0.001, 0.01)
    ledger.add(("small", "t", "f"), Usage(1, 2, estimated=True), 0.002, 0.02)
    ledger.add(("big", "t", "g"), Usage(5, 5), 0.5, 0.5)
    summary = ledger.summary("big")
    assert summary["totals"]["requests"] == 3
    assert summary["totals"]["estimated_requests"] == 1
    assert summary["totals"]["savings_usd"] == pytest.approx(0.027)
    small = next(r for r in summary["by_tier_team_feature"] if r["tier"] == "small")
    assert (small["input_tokens"], small["output_tokens"]) == (11, 22)
    assert Price(1e-6, 2e-6).cost(1, 1) == pytest.approx(3e-6)
