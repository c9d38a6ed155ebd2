"""Token discipline and cached-token pricing, pure: max_tokens clamping, context truncation, both providers'
usage shapes (JSON and SSE), cached-token prices and the ledger's cached columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import load_file
from tiered_operator.core.router_config import router_config
from tiered_router import cost
from tiered_router.config import Pricing, RouterConfig, Tier, TierKind
from tiered_router.discipline import (
    MAX_TOKENS_HEADER,
    TRUNCATED_HEADER,
    DisciplineError,
    apply_discipline,
    clamp_max_tokens,
    message_tokens,
    truncate_context,
)
from tiered_router.policy import LiveState, RequestFeatures, choose_tier

ROOT = Path(__file__).resolve().parents[2]

CLAMP_CASES = [
    # (chat, body limits, cap, limits sent, header or None)
    (True, {"max_tokens": 4000}, 512, {"max_tokens": 512}, "clamped 4000->512"),
    (True, {"max_completion_tokens": 4000}, 512, {"max_completion_tokens": 512}, "clamped 4000->512"),
    (True, {"max_tokens": 100, "max_completion_tokens": 900}, 512, {"max_tokens": 100, "max_completion_tokens": 512},
     "clamped 900->512"),
    (True, {"max_tokens": 800, "max_completion_tokens": 900}, 512, {"max_tokens": 512, "max_completion_tokens": 512},
     "clamped 900->512"),
    (True, {"max_tokens": 512}, 512, {"max_tokens": 512}, None),  # at the cap: untouched
    (True, {"max_tokens": 10}, 512, {"max_tokens": 10}, None),
    (True, {}, 512, {"max_tokens": 512}, "set 512"),  # absent: set
    (True, {"max_tokens": None}, 512, {"max_tokens": 512}, "set 512"),  # null means no limit: set
    (False, {"max_tokens": 4000}, 512, {"max_tokens": 512}, "clamped 4000->512"),
    (False, {}, 512, {}, None),  # the endpoint's default (16) is below the cap: setting it would raise it
    (False, {}, 8, {"max_tokens": 8}, "set 8"),
    (False, {"max_completion_tokens": 4000}, 512, {"max_completion_tokens": 4000}, None),  # not a completions field
]  # fmt: skip


@pytest.mark.parametrize(("chat", "limits", "cap", "sent", "header"), CLAMP_CASES)
def test_max_tokens_is_clamped_or_set(
    chat: bool, limits: dict[str, Any], cap: int, sent: dict[str, Any], header: str | None
) -> None:
    body = {"model": "auto", **limits, "prompt_cache_key": "k1"}
    out, clamp = clamp_max_tokens(body, chat, cap)
    assert {k: v for k, v in out.items() if k.startswith("max_")} == {k: v for k, v in sent.items() if v is not None}
    assert (clamp.header if clamp else None) == header
    assert out["prompt_cache_key"] == "k1"
    assert body == {"model": "auto", **limits, "prompt_cache_key": "k1"}  # the request is not mutated
    if clamp is None:
        assert out is body


@pytest.mark.parametrize("value", ["5000", 0, -1, 1.5, True, [1]])
def test_a_limit_that_is_not_a_positive_integer_is_refused(value: Any) -> None:
    """Not clamped blindly: a lax upstream could read "5000" as 5000 and slip past the cap."""
    with pytest.raises(DisciplineError, match="must be a positive integer") as raised:
        clamp_max_tokens({"max_tokens": value}, True, 512)
    assert raised.value.param == "max_tokens"


def _msg(role: str, chars: int, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": "x" * chars, **extra}


def _roles(messages: list[Any]) -> list[str]:
    return [f"{m['role']}{len(m.get('content') or '')}" for m in messages]


# Each message of 40 characters is 10 + 4 = 14 estimated tokens.
SYS, U1, A1, U2, A2, U3 = (_msg("system", 40), _msg("user", 40), _msg("assistant", 40), _msg("user", 41),
                           _msg("assistant", 41), _msg("user", 42))  # fmt: skip
TOOL_CALL = _msg("assistant", 0, tool_calls=[{"id": "c1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}])  # fmt: skip
TOOL_RESULT = _msg("tool", 40, tool_call_id="c1")

TRUNCATION_CASES = [
    # (messages, budget, kept (role+chars), dropped count or None)
    ([SYS, U1, A1, U2, A2, U3], 1000, [SYS, U1, A1, U2, A2, U3], None),  # fits
    ([SYS, U1, A1, U2, A2, U3], 60, [SYS, U2, A2, U3], 2),  # oldest turn (user + its answer) first
    ([SYS, U1, A1, U2, A2, U3], 30, [SYS, U3], 4),  # down to the system prompt and the last user turn
    ([SYS, U1, A1, U2, A2, U3], 5, [SYS, U3], 4),  # still over: kept turns are never dropped
    ([U1, A1, SYS, U2, A2, U3], 60, [SYS, U2, A2, U3], 2),  # a system message anywhere stays
    ([A1, U1, A1, U3], 45, [U1, A1, U3], 1),  # a leading assistant message is a turn of its own
    ([U1, TOOL_CALL, TOOL_RESULT, A1, U3], 40, [U3], 4),  # a tool call leaves with its result
    ([U1, A1, U3, TOOL_CALL, TOOL_RESULT], 50, [U3, TOOL_CALL, TOOL_RESULT], 2),  # after the last user: kept
    ([SYS, A1, A2], 10, [SYS, A1, A2], None),  # no user message: nothing is a turn
]  # fmt: skip


@pytest.mark.parametrize(("messages", "budget", "kept", "dropped"), TRUNCATION_CASES)
def test_truncation_drops_the_oldest_turns_first(
    messages: list[Any], budget: int, kept: list[Any], dropped: int | None
) -> None:
    out, truncation, tokens = truncate_context(messages, budget)
    assert _roles(out) == _roles(kept)
    assert [m is k for m, k in zip(out, kept, strict=True)] == [True] * len(kept)  # messages are not rewritten
    assert (truncation.dropped if truncation else None) == dropped
    assert tokens == sum(message_tokens(m) for m in out)
    if truncation is not None:
        assert truncation.tokens_before == sum(message_tokens(m) for m in messages)
        assert truncation.tokens_after == tokens


def test_message_tokens_count_text_parts_and_tool_calls_not_images() -> None:
    text = {"type": "text", "text": "x" * 40, "cache_control": {"type": "ephemeral"}}
    image = {"type": "image_url", "image_url": {"url": "data:" + "A" * 4000}}
    parts = {"role": "user", "content": [text, image]}
    assert message_tokens(parts) == 14
    assert message_tokens(TOOL_CALL) > message_tokens(_msg("assistant", 0))
    assert message_tokens("not a message") == 4


def test_apply_discipline_says_what_it_did_in_headers_and_keeps_cache_fields() -> None:
    cached_system = {"role": "system", "content": [{"type": "text", "text": "rules " * 20,
                                                    "cache_control": {"type": "ephemeral"}}]}  # fmt: skip
    body = {"model": "auto", "max_tokens": 3000, "prompt_cache_key": "tenant-7", "stream": True,
            "messages": [cached_system, U1, A1, U2, A2, U3]}  # fmt: skip
    done = apply_discipline(body, True, 256, 40)
    assert done.changed
    assert done.headers == {
        MAX_TOKENS_HEADER: "clamped 3000->256",
        TRUNCATED_HEADER: "dropped 4 of 6 messages, ~107->49 tokens (budget 40, still over)",
    }
    assert done.body["messages"][0] is cached_system and done.body["prompt_cache_key"] == "tenant-7"
    assert done.body["max_tokens"] == 256 and done.body["stream"] is True
    assert body["max_tokens"] == 3000 and len(body["messages"]) == 6  # the request itself is untouched

    fits = apply_discipline(body, True, None, 10_000)
    assert not fits.changed and fits.body is body and fits.headers == {}
    nothing = apply_discipline({"messages": [SYS, U3]}, True, None, 5)
    assert not nothing.changed and nothing.headers == {TRUNCATED_HEADER: "nothing to drop, ~24 tokens over budget"}
    text = apply_discipline({"prompt": "x" * 4000}, False, None, 5)  # no turns in a text completion
    assert not text.changed


def _config(**rule: Any) -> RouterConfig:
    return RouterConfig(
        tiers=[Tier(name="small", base_url="http://127.0.0.1:1/v1",
                    pricing=Pricing(gpu_hour_usd=1, tokens_per_second=100))],
        default="small",
        rules=[{"name": "chat", "match": {"taskTypes": ["chat"]}, "tier": "small", **rule}],
    )  # fmt: skip


def test_rules_carry_caps_and_the_decision_names_the_rule() -> None:
    config = _config(maxTokens=256, maxContextTokens=2000)
    assert (config.rules[0].max_tokens, config.rules[0].max_context_tokens) == (256, 2000)
    assert choose_tier(RequestFeatures("auto", task="chat"), config, LiveState()).rule == 0
    assert choose_tier(RequestFeatures("auto", task="other"), config, LiveState()).rule is None  # default
    assert choose_tier(RequestFeatures("small", task="chat"), config, LiveState()).rule is None  # explicit
    with pytest.raises(ValueError, match="maxTokens"):
        _config(maxTokens=0)


# Usage shapes: (usage object, input, cached read, cache write, output)
USAGE_CASES = [
    ({"prompt_tokens": 1200, "completion_tokens": 50}, 1200, 0, 0, 50),
    ({"prompt_tokens": 1200, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 1024}},
     1200, 1024, 0, 50),  # OpenAI: cached tokens are part of prompt_tokens
    ({"prompt_tokens": 1200, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": None}},
     1200, 0, 0, 50),
    ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}}, 10, 10, 0, 5),
    ({"prompt_tokens": 1300, "completion_tokens": 50, "cache_read_input_tokens": 1000,
      "cache_creation_input_tokens": 200}, 1300, 1000, 200, 50),  # LiteLLM-style translation
    ({"prompt_tokens": 1300, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 1000},
      "anthropic": {"input_tokens": 100, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
                    "output_tokens": 50}}, 1300, 1000, 200, 50),  # tiered_router.anthropic.openai_usage
    ({"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000,
      "cache_creation_input_tokens": 200}, 1300, 1000, 200, 50),  # Anthropic: input_tokens exclude the cache
    ({"input_tokens": 100, "output_tokens": 50}, 100, 0, 0, 50),
    ({"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": None}, 100, 0, 0, 50),
]  # fmt: skip


@pytest.mark.parametrize(("usage", "prompt", "read", "write", "completion"), USAGE_CASES)
def test_cached_usage_is_read_from_json_and_sse(usage: dict[str, Any], prompt: int, read: int, write: int,
                                                completion: int) -> None:  # fmt: skip
    want = cost.Usage(prompt, completion, cached_input_tokens=read, cache_write_tokens=write)
    body = json.dumps({"id": "x", "choices": [{"message": {"content": '"usage": 1'}}], "usage": usage}).encode()
    assert cost.usage_from_json(body) == want
    chunk = {"id": "x", "choices": [], "usage": usage}
    tail = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: ' + json.dumps(chunk).encode()
    assert cost.usage_from_sse(tail + b"\n\ndata: [DONE]\n\n") == want


def test_usage_from_anthropic_reads_only_anthropic_usage() -> None:
    assert cost.usage_from_anthropic({"input_tokens": 3, "output_tokens": 2, "cache_creation_input_tokens": 7}) == (
        cost.Usage(10, 2, cache_write_tokens=7)
    )
    assert cost.usage_from_anthropic({"prompt_tokens": 3, "completion_tokens": 2}) is None
    assert cost.usage_from_anthropic(None) is None


def _external(**pricing: float) -> Tier:
    return Tier(name="big", kind=TierKind.EXTERNAL, base_url="https://api.example.com/v1",
                pricing=Pricing(input_per_m_tok=3, output_per_m_tok=15, **pricing))  # fmt: skip


PRICE_CASES = [
    # (pricing extras, usage, USD)
    ({}, cost.Usage(1_000_000, 0, cached_input_tokens=800_000), 3.0),  # default: the input price
    ({"cached_input_per_m_tok": 0.3}, cost.Usage(1_000_000, 0, cached_input_tokens=800_000), 0.6 + 0.24),
    ({"cached_input_per_m_tok": 0.3, "cache_write_per_m_tok": 3.75},
     cost.Usage(1_300_000, 100_000, cached_input_tokens=1_000_000, cache_write_tokens=200_000),
     0.3 + 0.3 + 0.75 + 1.5),  # Anthropic: 100k uncached, 1M read, 200k written, 100k output
    ({"cache_write_per_m_tok": 3.75}, cost.Usage(200_000, 0, cache_write_tokens=200_000), 0.75),
]  # fmt: skip


@pytest.mark.parametrize(("pricing", "usage", "usd"), PRICE_CASES)
def test_cached_tokens_are_priced_at_the_tiers_cache_rates(pricing: dict[str, float], usage: cost.Usage,
                                                           usd: float) -> None:  # fmt: skip
    price = cost.tier_price(_external(**pricing))
    got = price.cost(usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens)
    assert got == pytest.approx(usd)
    assert price.cost(1_000_000, 0) == pytest.approx(3.0)  # callers without cache counts: unchanged


def test_local_tiers_price_cached_tokens_at_their_token_price_unless_told() -> None:
    local = Tier(name="small", base_url="http://127.0.0.1:1/v1",
                 pricing=Pricing(gpu_hour_usd=3.6, tokens_per_second=1000))  # fmt: skip
    price = cost.tier_price(local)
    assert price.cost(1000, 0, 800) == pytest.approx(price.cost(1000, 0))
    cheap = cost.tier_price(local.model_copy(update={"pricing": local.pricing.model_copy(
        update={"cached_input_per_m_tok": 0.0})}))  # fmt: skip
    assert cheap.cost(1000, 0, 800) == pytest.approx(price.cost(200, 0))


def test_the_ledger_shows_cached_tokens() -> None:
    ledger = cost.CostLedger()
    ledger.add(("big", "t", "f"), cost.Usage(1300, 50, cached_input_tokens=1000, cache_write_tokens=200), 1.0, 2.0)
    ledger.add(("big", "t", "f"), cost.Usage(100, 5), 0.1, 0.2)
    summary = ledger.summary("big")
    row = summary["by_tier_team_feature"][0]
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"]) == (1400, 1000, 200)
    assert summary["totals"]["cached_input_tokens"] == 1000 and summary["totals"]["cache_write_tokens"] == 200


def test_the_operator_renders_rule_caps_and_cache_prices() -> None:
    objects = [obj for path in sorted((ROOT / "examples").glob("*.yaml")) for obj in load_file(path)]
    policy = next(obj for obj in objects if isinstance(obj, RoutingPolicy))
    tiers = {obj.metadata.name: obj for obj in objects if isinstance(obj, InferenceTier)}
    wire = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    wire["spec"]["rules"][0].update(maxTokens=256, maxContextTokens=4000)
    frontier = next(t for t in wire["spec"]["tiers"] if t["name"] == "frontier")
    frontier["pricing"].update(cachedInputPerMTok=0.5, cacheWritePerMTok=2.5)
    config, _ = router_config(RoutingPolicy.model_validate(wire), tiers, bursting=False)
    assert (config.rules[0].max_tokens, config.rules[0].max_context_tokens) == (256, 4000)
    assert (config.rules[1].max_tokens, config.rules[1].max_context_tokens) == (None, None)
    pricing = config.tier("frontier").pricing
    assert (pricing.cached_input_per_m_tok, pricing.cache_write_per_m_tok) == (0.5, 2.5)
    plain, _ = router_config(policy, tiers, bursting=False)  # a policy without them renders none
    assert plain.tier("frontier").pricing.cached_input_per_m_tok is None and plain.rules[0].max_tokens is None
