"""Learned routing with the real encoder (int8 MiniLM) inside a real router process, fake upstreams behind it.

Labelled prompts land where the head says (classifier rule → `big`, else the default `small`), the score
comes back in `x-tiered-route-score`; similarTo rules match paraphrases of their examples and not unrelated
text; `/v1/tiered/explain` shows score, features and every rule's outcome without forwarding; and an encoder
that cannot answer within its time budget skips those rules (counted) without failing the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from router_bed import FakeUpstream, Router, base_config, router
from tiered_devstack.routing_data import HELD_OUT_FILES, load_labelled

pytestmark = pytest.mark.integration

FAQ_EXAMPLES = ["How do I reset my password?", "I forgot my password and cannot log in"]


def learned_config(up: dict[str, FakeUpstream], timeout_ms: float = 2000) -> dict[str, Any]:
    """The learned rules; a generous time budget by default (this machine is shared), the budget test's own."""
    return base_config(
        up,
        rules=[
            {"name": "faq", "match": {"similarTo": {"examples": FAQ_EXAMPLES, "threshold": 0.75}}, "tier": "edge"},
            {"name": "hard", "match": {"classifier": {}}, "tier": "big"},
        ],
        encoder={"timeoutMs": timeout_ms},
    )


@pytest.fixture(scope="module")
def learned(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with router(learned_config(router_fakes), tmp_path_factory.mktemp("learned")) as process:
        yield process


def chat(rt: Router, text: str) -> httpx.Response:
    reply = rt.http.post(
        "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": text}]}
    )
    assert reply.status_code == 200, reply.text
    return reply


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        ("Classify the sentiment of this review as positive or negative: 'Arrived fast, works great.'", "small"),
        ("Extract the invoice number and the due date: Invoice INV-2291, issued 3 May, due 2 June.", "small"),
        ("Rewrite this sentence to sound more polite: 'Send me the report now.'", "small"),
        (
            "Design a multi-region active-active database replication scheme with conflict resolution, and "
            "explain how it behaves under a network partition.",
            "big",
        ),
        (
            "A shop sells pens at 3 for $2 and notebooks at $4 each with 10% off orders over $30. Ana buys 12 pens "
            "and 6 notebooks; Ben buys 30 pens. Who pays more, and by how much?",
            "big",
        ),
    ],
)
def test_labelled_prompts_land_where_expected(learned: Router, text: str, tier: str) -> None:
    reply = chat(learned, text)
    score = float(reply.headers["x-tiered-route-score"])
    assert 0.0 <= score <= 1.0
    assert reply.headers["x-tiered-tier"] == tier, score
    assert reply.headers["x-tiered-reason"] == ("classifier" if tier == "big" else "default")


def test_held_out_prompts_route_mostly_right(learned: Router) -> None:
    """A slice of the never-trained split through the router: the head generalises beyond its training set."""
    rows = load_labelled(HELD_OUT_FILES)[::6]
    right = 0
    for row in rows:
        reply = learned.http.post(
            "/v1/tiered/explain", json={"model": "auto", "messages": [{"role": "user", "content": row.prompt}]}
        )
        right += (reply.json()["tier"] == "big") == row.frontier
    assert right / len(rows) >= 0.8, (right, len(rows))


def test_similarity_rule_matches_paraphrases_not_unrelated_text(learned: Router) -> None:
    paraphrase = chat(learned, "how can I reset my password")
    assert (paraphrase.headers["x-tiered-tier"], paraphrase.headers["x-tiered-reason"]) == ("edge", "rule:faq")
    unrelated = chat(learned, "Translate 'good morning' into French.")
    assert unrelated.headers["x-tiered-reason"] != "rule:faq"


def test_explain_shows_the_decision_without_forwarding(learned: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    before = {name: fake.requests for name, fake in router_fakes.items()}
    body = {
        "model": "auto",
        "messages": [
            {
                "role": "user",
                "content": "Is the non-compete in this contract "
                "enforceable in California, given that "
                "the employee worked remotely?",
            }
        ],
    }
    explained = learned.http.post("/v1/tiered/explain", json=body).json()
    assert {name: fake.requests for name, fake in router_fakes.items()} == before
    assert explained["tier"] == "big" and explained["reason"] == "classifier"
    assert explained["signals"]["scores"]["route-v1"] >= explained["signals"]["heads"]["route-v1"]["trainedThreshold"]
    assert set(explained["signals"]["surface"]) >= {"log_words", "questions"}
    assert [(r["rule"], r["matched"]) for r in explained["rules"]] == [("faq", False), ("hard", True)]
    assert explained["rules"][0]["unmet"] == "similarTo"


def test_encoder_past_its_time_budget_skips_the_rules_not_the_request(
    router_fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    config = learned_config(router_fakes, timeout_ms=0.001)
    with router(config, tmp_path) as rt:
        reply = chat(rt, "Design a lock-free queue for many producers and prove it linearizable.")
        assert (reply.headers["x-tiered-tier"], reply.headers["x-tiered-reason"]) == ("small", "default")
        assert "x-tiered-route-score" not in reply.headers
        assert rt.metric("tiered_router_route_signals_total", outcome="timeout") == 1
