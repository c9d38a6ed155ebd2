"""`choose_tier` as tables, plus a hypothesis property: private requests never get an external tier."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiered_router.config import RouterConfig, TierKind
from tiered_router.policy import LiveState, RequestFeatures, choose_tier

LOCAL_PRICE = {"gpuHourUSD": 1.0, "tokensPerSecond": 100}
EXTERNAL_PRICE = {"inputPerMTok": 1, "outputPerMTok": 2}


def config(**overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "tiers": [
            {
                "name": "small",
                "baseURL": "http://s/v1",
                "pricing": LOCAL_PRICE,
                "fallback": ["edge", "big"],
                "concurrency": 2,
                "burstTarget": "big",
            },
            {"name": "edge", "baseURL": "http://e/v1", "pricing": LOCAL_PRICE},
            {"name": "big", "kind": "external", "baseURL": "http://b/v1", "pricing": EXTERNAL_PRICE},
        ],
        "default": "small",
        "rules": [
            {
                "name": "extract",
                "match": {"taskTypes": ["extraction"], "maxPromptTokens": 100},
                "tier": "edge",
            },
            {"name": "long", "match": {"minPromptTokens": 1000}, "tier": "big"},
            {"match": {"keywords": ["Theorem"]}, "tier": "big"},
            {"name": "steps", "match": {"regex": r"step[- ]by[- ]step"}, "tier": "big"},
        ],
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


CONFIG = config()


@pytest.mark.parametrize(
    ("features", "tier", "reason", "chain"),
    [
        (RequestFeatures("small"), "small", "explicit", ("small", "edge", "big")),
        (RequestFeatures("big"), "big", "explicit", ("big",)),
        (RequestFeatures("auto"), "small", "default", ("small", "edge", "big")),
        (RequestFeatures("auto", task="extraction", prompt_tokens=50), "edge", "rule:extract", ("edge",)),
        (
            RequestFeatures("auto", task="extraction", prompt_tokens=500),
            "small",
            "default",
            ("small", "edge", "big"),
        ),
        (RequestFeatures("auto", prompt_tokens=1000), "big", "rule:long", ("big",)),
        (RequestFeatures("auto", text="prove the THEOREM"), "big", "rule:rule-2", ("big",)),
        (RequestFeatures("auto", text="go step by step"), "big", "rule:steps", ("big",)),
        (RequestFeatures("big", private=True), "small", "private", ("small", "edge")),
        (RequestFeatures("auto", text="a theorem", private=True), "small", "private", ("small", "edge")),
        (RequestFeatures("small", private=True), "small", "explicit", ("small", "edge")),
        (RequestFeatures("gpt-5"), None, "unknown-model", ()),
    ],
)
def test_routing_table(features: RequestFeatures, tier: str | None, reason: str, chain: tuple[str, ...]) -> None:
    decision = choose_tier(features, CONFIG, LiveState())
    assert (decision.tier, decision.reason, decision.chain) == (tier, reason, chain)


SCOPED = config(
    rules=[
        {"name": "word", "match": {"keywords": ["prove", "design a"]}, "tier": "big"},
        {"name": "sys", "match": {"keywords": ["legalese"], "scope": "lastUserAndSystem"}, "tier": "edge"},
        {"name": "all", "match": {"regex": "escalate", "scope": "conversation"}, "tier": "big"},
    ]
)


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        (RequestFeatures("auto", text="improve it"), "default"),
        (RequestFeatures("auto", text="Prove it."), "rule:word"),
        (RequestFeatures("auto", text="(prove)"), "rule:word"),
        (RequestFeatures("auto", text="prover"), "default"),
        (RequestFeatures("auto", text="designated"), "default"),
        (RequestFeatures("auto", text="design\na logo"), "rule:word"),
        (RequestFeatures("auto", text="hi", system="prove things", conversation="prove things\nhi"), "default"),
        (RequestFeatures("auto", text="hi", system="in legalese"), "rule:sys"),
        (RequestFeatures("auto", text="in legalese", system=""), "rule:sys"),
        (RequestFeatures("auto", text="hi", conversation="escalate\nok\nhi"), "rule:all"),
        (RequestFeatures("auto", text="escalate"), "rule:all"),  # no conversation given: the text is all
        (RequestFeatures("auto", text="hi", system="escalate"), "default"),
    ],
)
def test_keyword_and_regex_scope(features: RequestFeatures, reason: str) -> None:
    assert choose_tier(features, SCOPED, LiveState()).reason == reason


def burst_config(burst: bool) -> RouterConfig:
    data = CONFIG.model_dump(by_alias=True)
    data["tiers"][0]["burst"] = burst
    return RouterConfig.model_validate(data)


@pytest.mark.parametrize(
    ("burst", "in_flight", "private", "tier", "reason", "queue"),
    [
        (True, 1, False, "small", "default", False),  # under budget
        (True, 2, False, "big", "burst", False),  # over budget, bursting: overflow
        (False, 2, False, "small", "default", False),  # over budget, not bursting: stay (the engine queues)
        (True, 2, True, "small", "default", True),  # private overflow waits for a local slot
    ],
)
def test_overflow(burst: bool, in_flight: int, private: bool, tier: str, reason: str, queue: bool) -> None:
    decision = choose_tier(
        RequestFeatures("auto", private=private),
        burst_config(burst),
        LiveState(in_flight={"small": in_flight}),
    )
    assert (decision.tier, decision.reason, decision.queue) == (tier, reason, queue)


def test_open_breakers_are_skipped_and_all_open_means_retry_after() -> None:
    live = LiveState(open_until={"small": 105.0}, now=100.0)
    assert choose_tier(RequestFeatures("auto"), CONFIG, live).chain == ("edge", "big")
    live = LiveState(open_until={"small": 105.0, "edge": 103.2}, now=100.0)
    decision = choose_tier(RequestFeatures("auto", private=True), CONFIG, live)
    assert (decision.tier, decision.reason, decision.retry_after) == (None, "unavailable", 4)
    assert (
        choose_tier(RequestFeatures("auto"), CONFIG, LiveState(open_until={"small": 99.0}, now=100.0)).chain[0]
        == "small"
    )  # cooldown over: half-open


def test_private_with_no_local_tier_is_unavailable() -> None:
    only_external = config(
        tiers=[{"name": "big", "kind": "external", "baseURL": "http://b/v1", "pricing": EXTERNAL_PRICE}],
        default="big",
        rules=[],
    )
    assert choose_tier(RequestFeatures("big", private=True), only_external, LiveState()).tier is None


# ---- property: whatever the config, request and live state, private requests stay local -------------

names = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def configs(draw: st.DrawFn) -> RouterConfig:
    tier_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    tiers = []
    for name in tier_names:
        external = draw(st.booleans())
        tiers.append(
            {
                "name": name,
                "kind": "external" if external else "local",
                "baseURL": f"http://{name}/v1",
                "pricing": EXTERNAL_PRICE if external else LOCAL_PRICE,
                # A tier cannot list itself as a fallback.
                "fallback": [n for n in draw(st.lists(st.sampled_from(tier_names), max_size=3)) if n != name],
                "concurrency": draw(st.none() | st.integers(1, 3)),
                "burst": draw(st.booleans()),
                "burstTarget": draw(st.sampled_from(tier_names)),
            }
        )
    for tier in tiers:  # a tier cannot burst into itself
        if tier["burstTarget"] == tier["name"]:
            tier["burstTarget"] = next((t["name"] for t in tiers if t["name"] != tier["name"]), None)
            tier["burst"] = tier["burst"] and tier["burstTarget"] is not None
    rules = [
        {
            "match": {"keywords": [draw(st.sampled_from(["x", "y"]))]},
            "tier": draw(st.sampled_from(tier_names)),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return RouterConfig.model_validate({"tiers": tiers, "default": draw(st.sampled_from(tier_names)), "rules": rules})


@settings(max_examples=300, deadline=None)
@given(
    config=configs(),
    model=st.sampled_from(["a", "b", "c", "d", "auto", "zzz"]),
    text=st.text("xyz ", max_size=8),
    in_flight=st.dictionaries(names, st.integers(0, 5)),
    open_until=st.dictionaries(names, st.floats(0, 200)),
)
def test_private_requests_never_get_an_external_tier(
    config: RouterConfig, model: str, text: str, in_flight: dict[str, int], open_until: dict[str, float]
) -> None:
    decision = choose_tier(
        RequestFeatures(model, text=text, private=True),
        config,
        LiveState(in_flight=in_flight, open_until=open_until, now=100.0),
    )
    kinds = {t.name: t.kind for t in config.tiers}
    assert all(kinds[name] is TierKind.LOCAL for name in decision.chain)
    assert decision.tier is None or decision.tier == decision.chain[0]
