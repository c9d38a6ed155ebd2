"""Confidence escalation with real router and upstream processes on loopback.

The fakes (tiered_devstack.fake_upstream) return the logprobs a test sets (`/_fake/logprobs`), so each case
picks its confidence: low escalates `small` → `big` (both calls priced), high does not, missing logprobs do
not, private requests never reach the external `big`, streams are not escalated, a failing `big` leaves the
first answer. The last tests put the real SmolLM2-135M GGUF (the project's llama.cpp app on a local Ray
Serve, started the way tests/integration/test_serving.py does) behind the router as the `from` tier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from router_bed import FakeUpstream, Router, base_config, router
from test_serving import MODEL_ID, Serving, serving  # noqa: F401  (`serving`: the module-scoped Ray Serve app)

pytestmark = pytest.mark.integration

ESCALATION = {"from": "small", "to": "big", "minConfidence": 0.7}
LOW, HIGH = math.log(0.1), math.log(0.95)


def config(up: dict[str, FakeUpstream], **escalation: Any) -> dict[str, Any]:
    return base_config(up, escalation={**ESCALATION, **escalation})


@pytest.fixture(scope="module")
def escalating(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with router(config(router_fakes), tmp_path_factory.mktemp("escalating")) as process:
        yield process


@pytest.fixture
def rt(escalating: Router, router_fakes: dict[str, FakeUpstream]) -> Iterator[Router]:
    """The escalating router with reset fakes; a test that applies another config gets the base back."""
    for fake in router_fakes.values():
        fake.reset()
    before = escalating.config_path.read_text()
    yield escalating
    if escalating.config_path.read_text() != before:
        escalating.apply(config(router_fakes))


def logprobs(fake: FakeUpstream, **spec: Any) -> None:
    fake.control.post("/_fake/logprobs", json=spec).raise_for_status()


def ask(rt: Router, feature: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """A chat request for `model: auto` (the default tier is `small`), raw: headers and parsed body."""
    client = openai.OpenAI(base_url=rt.base_url, api_key="none", max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-tiered-feature": feature, **(headers or {})},
        **kwargs,
    )


def cost_rows(rt: Router, feature: str) -> dict[str, dict[str, Any]]:
    rows = rt.http.get("/v1/tiered/costs").json()["by_tier_team_feature"]
    return {row["tier"]: row for row in rows if row["feature"] == feature}


def outcome(rt: Router, name: str) -> float:
    return rt.metric("tiered_router_escalations_total", outcome=name)


def test_low_confidence_escalates_and_both_calls_are_priced(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    small, big = router_fakes["small"], router_fakes["big"]
    logprobs(small, logprob=LOW)
    before = outcome(rt, "escalated")
    raw = ask(rt, "esc-low")
    answer = raw.parse()
    assert raw.headers["x-tiered-escalated"] == "1"
    assert raw.headers["x-tiered-tier"] == "big" and raw.headers["x-tiered-escalation"] == "escalated"
    assert float(raw.headers["x-tiered-confidence"]) == pytest.approx(0.1, abs=1e-6)
    assert raw.headers["x-tiered-reason"] == "default"
    assert answer.model == "big" and answer.choices[0].logprobs is None  # big's answer, as the client asked
    assert small.requests == 1 and big.requests == 1
    assert small.stats()["bodies"][0]["logprobs"] is True  # asked of small for the check
    assert "logprobs" not in big.stats()["bodies"][0]  # big gets the client's request
    rows = cost_rows(rt, "esc-low")
    assert rows["small"]["requests"] == 1 and rows["big"]["requests"] == 1
    assert rows["small"]["cost_usd"] > 0 and rows["big"]["cost_usd"] > rows["small"]["cost_usd"]
    assert outcome(rt, "escalated") == before + 1
    assert rt.metric("tiered_router_requests_total", tier="big", feature="esc-low", reason="escalation") == 1
    assert rt.metric("tiered_router_requests_total", tier="small", feature="esc-low", reason="default") == 1


def test_high_confidence_keeps_the_answer_and_strips_the_logprobs(
    rt: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    logprobs(router_fakes["small"], logprob=HIGH)
    before = outcome(rt, "kept")
    raw = ask(rt, "esc-high")
    assert raw.headers["x-tiered-tier"] == "small" and raw.headers["x-tiered-escalation"] == "kept"
    assert "x-tiered-escalated" not in raw.headers
    assert float(raw.headers["x-tiered-confidence"]) == pytest.approx(0.95, abs=1e-6)
    assert raw.parse().choices[0].logprobs is None  # the router asked for them, the client did not
    assert router_fakes["big"].requests == 0
    assert set(cost_rows(rt, "esc-high")) == {"small"}
    assert outcome(rt, "kept") == before + 1


def test_a_client_that_asks_for_logprobs_gets_them_as_asked(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    rt.apply(config(router_fakes, method="firstTokenMargin"))  # the router needs two alternatives per token
    logprobs(router_fakes["small"], logprob=HIGH, top2=math.log(0.01))
    raw = ask(rt, "esc-own", logprobs=True, top_logprobs=1)
    assert raw.headers["x-tiered-escalation"] == "kept"
    assert float(raw.headers["x-tiered-confidence"]) == pytest.approx(0.95 - 0.01, abs=1e-6)
    assert router_fakes["small"].stats()["bodies"][0]["top_logprobs"] == 2
    content = raw.parse().choices[0].logprobs.content
    assert content and all(len(token.top_logprobs) == 1 for token in content)


def test_a_near_tie_on_the_first_token_escalates_a_text_completion(
    rt: Router, router_fakes: dict[str, FakeUpstream]
) -> None:
    rt.apply(config(router_fakes, method="firstTokenMargin"))
    logprobs(router_fakes["small"], logprob=math.log(0.5), top2=math.log(0.45))
    response = rt.http.post(
        "/v1/completions", json={"model": "auto", "prompt": "Sentiment of 'fine, I guess':", "max_tokens": 1}
    )
    assert response.status_code == 200
    assert response.headers["x-tiered-escalated"] == "1" and response.headers["x-tiered-tier"] == "big"
    assert float(response.headers["x-tiered-confidence"]) == pytest.approx(0.05, abs=1e-6)
    assert router_fakes["small"].stats()["bodies"][0]["logprobs"] == 2
    assert response.json()["object"] == "text_completion" and router_fakes["big"].requests == 1


def test_missing_logprobs_never_escalate(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    logprobs(router_fakes["small"], omit=True)
    before = outcome(rt, "no_logprobs")
    raw = ask(rt, "esc-none")
    assert raw.headers["x-tiered-tier"] == "small" and raw.headers["x-tiered-escalation"] == "no-logprobs"
    assert "x-tiered-confidence" not in raw.headers and "x-tiered-escalated" not in raw.headers
    assert router_fakes["big"].requests == 0
    assert outcome(rt, "no_logprobs") == before + 1


@pytest.mark.parametrize("mark", [{"x-tiered-private": "true"}, {"x-tiered-team": "legal"}], ids=["header", "team"])
def test_a_private_request_never_reaches_the_external_tier(
    rt: Router, router_fakes: dict[str, FakeUpstream], mark: dict[str, str]
) -> None:
    logprobs(router_fakes["small"], logprob=LOW)
    before = outcome(rt, "private_kept")
    raw = ask(rt, "esc-private", headers=mark)
    assert raw.headers["x-tiered-tier"] == "small" and raw.headers["x-tiered-escalation"] == "private-kept"
    assert float(raw.headers["x-tiered-confidence"]) == pytest.approx(0.1, abs=1e-6)
    assert "x-tiered-escalated" not in raw.headers
    assert router_fakes["big"].requests == 0
    assert outcome(rt, "private_kept") == before + 1


def test_a_private_request_may_escalate_to_a_local_tier(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    rt.apply(config(router_fakes, to="edge"))
    logprobs(router_fakes["small"], logprob=LOW)
    raw = ask(rt, "esc-private-local", headers={"x-tiered-private": "1"})
    assert raw.headers["x-tiered-escalated"] == "1" and raw.headers["x-tiered-tier"] == "edge"
    assert router_fakes["edge"].requests == 1 and router_fakes["big"].requests == 0


def test_streams_are_not_escalated(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    small = router_fakes["small"]
    logprobs(small, logprob=LOW)
    before = outcome(rt, "streaming_skipped")
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    with rt.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["x-tiered-tier"] == "small"
        assert response.headers["x-tiered-escalation"] == "skipped-streaming"
        events = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert events and all(json.loads(e[6:])["choices"][0]["logprobs"] is None for e in events)
    assert "logprobs" not in small.stats()["bodies"][0]
    assert router_fakes["big"].requests == 0
    assert outcome(rt, "streaming_skipped") == before + 1


@pytest.mark.parametrize("mode", [{"mode": "fail", "status": 500}, {"mode": "fail", "status": 400}, {"mode": "stall"}])
def test_a_failing_escalation_target_returns_the_first_answer(
    rt: Router, router_fakes: dict[str, FakeUpstream], mode: dict[str, Any]
) -> None:
    logprobs(router_fakes["small"], logprob=LOW)
    router_fakes["big"].mode(**mode)
    before = outcome(rt, "failed")
    raw = ask(rt, "esc-failed")
    assert raw.headers["x-tiered-tier"] == "small" and raw.headers["x-tiered-escalation"] == "failed"
    assert "x-tiered-escalated" not in raw.headers
    answer = raw.parse()
    assert answer.model == "small-model" and answer.choices[0].message.content
    assert answer.choices[0].logprobs is None
    assert router_fakes["big"].requests >= 1
    assert outcome(rt, "failed") == before + 1
    assert set(cost_rows(rt, "esc-failed")) == {"small"}  # only the answer that was served is priced


# ---- the real SmolLM2 GGUF as the `from` tier ------------------------------------------------------------


def smollm2_config(app: Serving, big: FakeUpstream, min_confidence: float) -> dict[str, Any]:
    return {
        "tiers": [
            {
                "name": "smollm2",
                "baseURL": f"{app.base_url}/v1",
                "model": MODEL_ID,
                "pricing": {"gpuHourUSD": 0.5, "tokensPerSecond": 90},
            },
            {
                "name": "big",
                "kind": "external",
                "baseURL": big.base_url,
                "pricing": {"inputPerMTok": 5, "outputPerMTok": 30},
            },
        ],
        "default": "smollm2",
        "baseline": "big",
        "escalation": {"from": "smollm2", "to": "big", "minConfidence": min_confidence},
        "retries": 0,
        "timeouts": {"readSeconds": 120},
    }


QUESTION = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
    "max_tokens": 8,
    "temperature": 0,
}


def test_smollm2_answers_escalate_below_the_threshold_and_stay_above_it(
    serving: Serving,  # noqa: F811
    router_fakes: dict[str, FakeUpstream],
    tmp_path: Path,
) -> None:
    big = router_fakes["big"]
    big.reset()
    with router(smollm2_config(serving, big, 0.99), tmp_path) as rt, httpx.Client(timeout=120) as http:
        escalated = http.post(f"{rt.base_url}/chat/completions", json=QUESTION)
        assert escalated.status_code == 200, escalated.text
        assert escalated.headers["x-tiered-escalated"] == "1" and escalated.headers["x-tiered-tier"] == "big"
        first = float(escalated.headers["x-tiered-confidence"])
        assert 0 < first < 0.99
        assert big.requests == 1

        rt.apply(smollm2_config(serving, big, 0.01))
        kept = http.post(f"{rt.base_url}/chat/completions", json={**QUESTION, "logprobs": True})
        assert kept.status_code == 200, kept.text
        assert kept.headers["x-tiered-tier"] == "smollm2" and kept.headers["x-tiered-escalation"] == "kept"
        # The header is exp(mean logprob) of the tokens SmolLM2 generated, as returned to the client.
        content = kept.json()["choices"][0]["logprobs"]["content"]
        assert content and all(token["logprob"] <= 0 for token in content)
        expected = math.exp(sum(token["logprob"] for token in content) / len(content))
        assert float(kept.headers["x-tiered-confidence"]) == pytest.approx(expected, abs=1e-6)
        # Same request at temperature 0: the same tokens, so the confidence the first call was judged by.
        assert first == pytest.approx(expected, abs=1e-3)
        assert big.requests == 1
        rows = {row["tier"]: row for row in rt.http.get("/v1/tiered/costs").json()["by_tier_team_feature"]}
        assert rows["smollm2"]["requests"] == 2 and rows["big"]["requests"] == 1
        assert rows["smollm2"]["output_tokens"] == 2 * len(content)  # SmolLM2's real usage, twice
