"""Classifier and similarTo conditions in the pure policy (signals given), rule traces, heads, RouteLLM scoring."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest
from tiered_devstack.routing_data import (
    HELD_OUT_FILES,
    ROUTING_DIR,
    TRAIN_FILES,
    Benchmark,
    operating_point,
    routellm_curve,
)
from tiered_router.config import Classifier, RouterConfig
from tiered_router.learned import (
    SURFACE_FEATURES,
    RouteHead,
    UnknownHead,
    load_head,
    ngram_buckets,
    surface_features,
    tail_text,
)
from tiered_router.policy import LiveState, RequestFeatures, RouteSignals, choose_tier, trace_rules

LOCAL = {"gpuHourUSD": 1.0, "tokensPerSecond": 100}
CONFIG = RouterConfig.model_validate(
    {
        "tiers": [
            {"name": "small", "baseURL": "http://s/v1", "pricing": LOCAL},
            {"name": "faq", "baseURL": "http://f/v1", "pricing": LOCAL},
            {
                "name": "big",
                "kind": "external",
                "baseURL": "http://b/v1",
                "pricing": {"inputPerMTok": 1, "outputPerMTok": 2},
            },
        ],
        "default": "small",
        "rules": [
            {
                "name": "faq",
                "match": {"similarTo": {"examples": ["how do I reset my password"], "threshold": 0.7}},
                "tier": "faq",
            },
            {"name": "hard", "match": {"classifier": {"threshold": 0.6}}, "tier": "big"},
        ],
    }
)


def route(scores: dict[str, float] | None = None, similarity: dict[int, float] | None = None) -> tuple[str, str]:
    signals = RouteSignals(scores or {}, similarity or {})
    decision = choose_tier(RequestFeatures("auto", 10, text="x", signals=signals), CONFIG, LiveState())
    assert decision.tier is not None
    return decision.tier, decision.reason


@pytest.mark.parametrize(
    ("scores", "similarity", "expected"),
    [
        ({"route-v1": 0.9}, {0: 0.2}, ("big", "classifier")),
        ({"route-v1": 0.6}, {}, ("big", "classifier")),  # at the threshold
        ({"route-v1": 0.59}, {0: 0.2}, ("small", "default")),
        ({"route-v1": 0.9}, {0: 0.8}, ("faq", "rule:faq")),  # the first matching rule wins
        ({}, {}, ("small", "default")),  # no signals (encoder timed out): both rules skipped
        ({"other-head": 0.99}, {}, ("small", "default")),  # a score of another head is not this rule's
    ],
)
def test_signals_decide_classifier_and_similarity_rules(
    scores: dict[str, float], similarity: dict[int, float], expected: tuple[str, str]
) -> None:
    assert route(scores, similarity) == expected


def test_classifier_is_a_condition_and_needs_the_encoder() -> None:
    assert CONFIG.needs_encoder
    assert CONFIG.rules[1].match.has_conditions
    plain = CONFIG.model_copy(update={"rules": []})
    assert not plain.needs_encoder


def test_trace_names_the_condition_that_did_not_hold() -> None:
    features = RequestFeatures("auto", 10, text="x", signals=RouteSignals({"route-v1": 0.1}, {}))
    traces = trace_rules(features, CONFIG)
    assert [(t.rule, t.matched, t.unmet) for t in traces] == [
        ("faq", False, "similarTo (no embedding: skipped)"),
        ("hard", False, "classifier"),
    ]


def test_head_round_trips_and_blends_its_two_models() -> None:
    d = 2 * 384 + len(SURFACE_FEATURES)
    embedding_weights = np.zeros(d, np.float32)
    embedding_weights[0] = 2.0  # only the first embedding dimension counts
    head = RouteHead("t", "t+1", 64, 32, embedding_weights, 0.0, np.zeros(16, np.float32), -1.0, 0.25, 0.5)
    again = RouteHead.from_json(head.to_json({}))
    full, tail = np.zeros(384, np.float32), np.zeros(384, np.float32)
    full[0] = 1.0
    expected = 0.75 / (1 + np.exp(-2.0)) + 0.25 / (1 + np.exp(1.0))
    assert again.score("any text", full, tail) == pytest.approx(expected)
    assert ngram_buckets("Is it 42? is IT 7", 16) == ngram_buckets("is it 1 is it 9", 16)  # numbers fold to #


def test_tail_text_is_the_question_after_the_document() -> None:
    assert tail_text("Contract text...\n\n  \nWhich law governs?\n") == "Which law governs?"
    assert tail_text("one paragraph only") == "one paragraph only"


def test_the_shipped_head_loads_and_unknown_heads_are_named() -> None:
    head = load_head("route-v1")
    assert head.embedding_weights.shape == (2 * 384 + len(SURFACE_FEATURES),)
    assert 0 < head.threshold < 1 and 0 <= head.ngram_weight < 1
    with pytest.raises(UnknownHead, match="route-v1"):
        load_head("nope")


def test_surface_features_see_the_question_after_a_document() -> None:
    document = "clause " * 400 + "\n\nWhich law governs this agreement?"
    values = dict(zip(SURFACE_FEATURES, surface_features(document), strict=True))
    assert values["log_words"] > values["log_tail_words"] > 0
    assert values["questions"] == pytest.approx(0.2)


def test_routellm_scoring_oracle_random_and_weak_only() -> None:
    rng = np.random.default_rng(1)
    weak = rng.random(2000) < 0.6
    strong = weak | (rng.random(2000) < 0.5)
    bench = Benchmark("toy", [""] * 2000, weak, strong)
    oracle = routellm_curve((strong & ~weak).astype(float) + rng.random(2000) * 0.01, bench)
    random = routellm_curve(rng.random(2000), bench)
    assert oracle.apgr > 0.85 and 0.4 < random.apgr < 0.6
    assert oracle.cpt(0.95) < random.cpt(0.95)
    assert oracle.points[0][0] == 0.0 and oracle.points[-1][0] == 1.0
    assert operating_point(np.zeros(2000), bench, 0.5) == {
        "strongShare": 0.0,
        "accuracy": float(weak.mean()),
        "gapRecovered": 0.0,
    }


def test_a_classifier_rule_without_threshold_uses_the_heads_trained_one() -> None:
    config = CONFIG.model_copy(
        update={
            "rules": [
                CONFIG.rules[1].model_copy(
                    update={"match": CONFIG.rules[1].match.model_copy(update={"classifier": Classifier()})}
                )
            ]
        }
    )
    features = lambda score: RequestFeatures(  # noqa: E731
        "auto", 10, text="x", signals=RouteSignals({"route-v1": score}, {}, {"route-v1": 0.35})
    )
    assert choose_tier(features(0.36), config, LiveState()).tier == "big"
    assert choose_tier(features(0.34), config, LiveState()).tier == "small"


def test_the_shipped_head_was_trained_on_the_current_training_files() -> None:
    """Changing data/routing/ without `make train-router` would ship a head that no longer matches it."""
    head = json.loads((resources.files("tiered_router.heads") / "route-v1.json").read_text())
    digest = hashlib.sha256(b"".join((ROUTING_DIR / name).read_bytes() for name in TRAIN_FILES)).hexdigest()
    assert head["metrics"]["trainSha256"] == digest, "data/routing changed: run make train-router"
    assert head["metrics"]["trainFiles"] == list(TRAIN_FILES)
    assert not set(TRAIN_FILES) & set(HELD_OUT_FILES)
