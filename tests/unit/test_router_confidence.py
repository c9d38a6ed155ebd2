"""Confidence escalation as pure functions (tiered_router.escalation): confidence by method over both
response shapes, missing data, the decision table, the fields asked for and what the client gets back."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from pydantic import ValidationError
from tiered_router.config import RouterConfig
from tiered_router.escalation import (
    Asked,
    Escalation,
    Method,
    Outcome,
    answer_tokens,
    ask_for_logprobs,
    client_asked,
    confidence,
    decide,
    restore,
)


def chat_answer(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    content = [
        {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
        }
        for token, logprob, top in tokens
    ]
    message = {"role": "assistant", "content": "".join(t for t, _, _ in tokens)}
    choice = {"index": 0, "message": message, "logprobs": {"content": content}}
    return {"object": "chat.completion", "choices": [choice]}


def completion_answer(tokens: list[tuple[str, float, dict[str, float]]]) -> dict[str, Any]:
    logprobs = {
        "tokens": [t for t, _, _ in tokens],
        "token_logprobs": [lp for _, lp, _ in tokens],
        "top_logprobs": [top for _, _, top in tokens],
        "text_offset": list(range(len(tokens))),
    }
    return {"object": "text_completion", "choices": [{"index": 0, "text": "x", "logprobs": logprobs}]}


# "Yes ." with the first token a near tie against "No" and the second certain.
CHAT = chat_answer([("Yes", math.log(0.5), [("Yes", math.log(0.5)), ("No", math.log(0.4))]), (".", 0.0, [(".", 0.0)])])
COMPLETION = completion_answer(
    [(" Yes", math.log(0.5), {" Yes": math.log(0.5), " No": math.log(0.4)}), (".", 0.0, {".": 0.0})]
)


@pytest.mark.parametrize("answer", [CHAT, COMPLETION], ids=["chat", "completion"])
@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (Method.MEAN_TOKEN_PROB, math.sqrt(0.5 * 1.0)),  # geometric mean of 0.5 and 1
        (Method.MIN_TOKEN_PROB, 0.5),
        (Method.FIRST_TOKEN_MARGIN, 0.5 - 0.4),
    ],
)
def test_confidence_by_method_on_both_shapes(answer: dict[str, Any], method: Method, expected: float) -> None:
    assert confidence(answer, method) == pytest.approx(expected)


def test_mean_token_prob_is_exp_of_the_mean_logprob() -> None:
    logprobs = [-0.1, -2.3, -0.7, -0.05]
    answer = chat_answer([(f"t{i}", lp, []) for i, lp in enumerate(logprobs)])
    assert confidence(answer, Method.MEAN_TOKEN_PROB) == pytest.approx(math.exp(sum(logprobs) / 4))
    assert confidence(answer, Method.MIN_TOKEN_PROB) == pytest.approx(math.exp(-2.3))


def test_margin_uses_the_best_two_even_when_the_sampled_token_is_not_the_best() -> None:
    # Sampling picked "No" (0.3); the best two alternatives are "Yes" 0.6 and "No" 0.3.
    answer = chat_answer([("No", math.log(0.3), [("Yes", math.log(0.6)), ("Maybe", math.log(0.1))])])
    assert confidence(answer, Method.FIRST_TOKEN_MARGIN) == pytest.approx(0.6 - 0.3)


@pytest.mark.parametrize(
    "answer",
    [
        {"choices": [{"message": {"content": "hi"}, "logprobs": None}]},
        {"choices": [{"message": {"content": "hi"}}]},
        {"choices": []},
        {"error": {"message": "boom"}},
        "not an object",
        None,
        chat_answer([]),  # no generated tokens
        chat_answer([("a", "oops", [])]),  # type: ignore[list-item]
        completion_answer([]),
        {"choices": [{"logprobs": {"token_logprobs": None}}]},
        {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": float("nan")}]}}]},
    ],
)
def test_missing_or_malformed_logprobs_give_none(answer: Any) -> None:
    for method in Method:
        assert confidence(answer, method) is None


def test_margin_without_two_alternatives_is_none_but_the_mean_still_works() -> None:
    answer = chat_answer([("Yes", -0.1, [])])
    assert confidence(answer, Method.FIRST_TOKEN_MARGIN) is None
    assert confidence(answer, Method.MEAN_TOKEN_PROB) == pytest.approx(math.exp(-0.1))


def test_logprobs_are_clamped_to_probabilities() -> None:
    # A logprob a hair above 0 (rounding) is 0; -inf is probability 0, not an error.
    assert confidence(chat_answer([("a", 1e-9, [])]), Method.MEAN_TOKEN_PROB) == 1.0
    assert confidence(chat_answer([("a", float("-inf"), [])]), Method.MIN_TOKEN_PROB) == 0.0
    assert answer_tokens(CHAT) is not None


ESCALATION = Escalation.model_validate({"from": "small", "to": "big", "minConfidence": 0.7})


@pytest.mark.parametrize(
    ("value", "private", "to_external", "outcome"),
    [
        (None, False, True, Outcome.NO_LOGPROBS),
        (None, True, True, Outcome.NO_LOGPROBS),
        (0.7, False, True, Outcome.KEPT),  # at the threshold: kept
        (0.95, True, True, Outcome.KEPT),
        (0.69, False, True, Outcome.ESCALATED),
        (0.1, True, True, Outcome.PRIVATE_KEPT),
        (0.1, True, False, Outcome.ESCALATED),  # a local `to` may take private traffic
    ],
)
def test_decision_table(value: float | None, private: bool, to_external: bool, outcome: Outcome) -> None:
    assert decide(value, ESCALATION, private, to_external) is outcome


@pytest.mark.parametrize(
    ("body", "chat", "method", "fields"),
    [
        ({}, True, Method.MEAN_TOKEN_PROB, {"logprobs": True}),
        ({}, True, Method.FIRST_TOKEN_MARGIN, {"logprobs": True, "top_logprobs": 2}),
        ({"logprobs": True}, True, Method.MIN_TOKEN_PROB, {}),
        ({"logprobs": True, "top_logprobs": 5}, True, Method.FIRST_TOKEN_MARGIN, {}),
        ({"logprobs": True, "top_logprobs": 1}, True, Method.FIRST_TOKEN_MARGIN, {"logprobs": True, "top_logprobs": 2}),
        ({"logprobs": False}, True, Method.MEAN_TOKEN_PROB, {"logprobs": True}),
        ({}, False, Method.MEAN_TOKEN_PROB, {"logprobs": 0}),
        ({}, False, Method.FIRST_TOKEN_MARGIN, {"logprobs": 2}),
        ({"logprobs": 0}, False, Method.MEAN_TOKEN_PROB, {}),
        ({"logprobs": 1}, False, Method.FIRST_TOKEN_MARGIN, {"logprobs": 2}),
        ({"logprobs": 3}, False, Method.FIRST_TOKEN_MARGIN, {}),
    ],
)
def test_fields_asked_for(body: dict[str, Any], chat: bool, method: Method, fields: dict[str, Any]) -> None:
    assert ask_for_logprobs(body, chat, method) == fields


def test_restore_removes_logprobs_the_client_did_not_ask_for() -> None:
    answer = restore(copy.deepcopy(CHAT), client_asked({}, chat=True), chat=True)
    assert answer["choices"][0]["logprobs"] is None
    assert answer["choices"][0]["message"] == CHAT["choices"][0]["message"]
    text = restore(copy.deepcopy(COMPLETION), client_asked({}, chat=False), chat=False)
    assert text["choices"][0]["logprobs"] is None


def test_restore_trims_alternatives_to_what_the_client_asked_for() -> None:
    chat = restore(copy.deepcopy(CHAT), Asked(logprobs=True, top=1), chat=True)
    assert [len(e["top_logprobs"]) for e in chat["choices"][0]["logprobs"]["content"]] == [1, 1]
    assert chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == "Yes"
    text = restore(copy.deepcopy(COMPLETION), Asked(logprobs=True, top=1), chat=False)
    assert text["choices"][0]["logprobs"]["top_logprobs"] == [{" Yes": math.log(0.5)}, {".": 0.0}]
    assert restore(copy.deepcopy(CHAT), Asked(logprobs=True, top=5), chat=True) == CHAT


def test_the_config_model_speaks_camel_case_with_from() -> None:
    wire = {"from": "a", "to": "b", "minConfidence": 0.5, "method": "minTokenProb"}
    escalation = Escalation.model_validate(wire)
    assert escalation.from_tier == "a" and escalation.method is Method.MIN_TOKEN_PROB
    assert escalation.model_dump(by_alias=True) == wire
    assert Escalation(from_tier="a", to="b", min_confidence=0.5).method is Method.MEAN_TOKEN_PROB
    for bad in ({"minConfidence": 1.5}, {"method": "vibes"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            Escalation.model_validate({"from": "a", "to": "b", "minConfidence": 0.5, **bad})


def router_config(escalation: dict[str, Any]) -> dict[str, Any]:
    return {
        "tiers": [
            {"name": "small", "baseURL": "http://127.0.0.1:1/v1", "pricing": {"gpuHourUSD": 1, "tokensPerSecond": 10}},
            {
                "name": "big",
                "kind": "external",
                "baseURL": "http://127.0.0.1:2/v1",
                "pricing": {"inputPerMTok": 1, "outputPerMTok": 2},
            },
        ],
        "default": "small",
        "escalation": escalation,
    }


def test_router_config_takes_an_escalation() -> None:
    config = RouterConfig.model_validate(router_config({"from": "small", "to": "big", "minConfidence": 0.7}))
    assert config.escalation is not None and config.escalation.to == "big"


@pytest.mark.parametrize(
    ("escalation", "message"),
    [
        ({"from": "tiny", "to": "big", "minConfidence": 0.7}, "escalation.from names unknown tier 'tiny'"),
        ({"from": "small", "to": "huge", "minConfidence": 0.7}, "escalation.to names unknown tier 'huge'"),
        ({"from": "small", "to": "small", "minConfidence": 0.7}, "escalation.from and escalation.to are both 'small'"),
    ],
)
def test_router_config_checks_escalation_references(escalation: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouterConfig.model_validate(router_config(escalation))
