"""Confidence escalation: the `escalation` config, and how sure a tier's answer is from its logprobs.

A tier named by `escalation.from` is asked for token logprobs; its answer's confidence (a probability in
[0, 1]) decides whether the same request is sent again to `escalation.to`. The methods:

- `meanTokenProb` (default): the geometric mean of the generated tokens' probabilities,
  `exp(mean(logprob))`. One unlikely token lowers it a little, many lower it a lot; length-neutral.
- `minTokenProb`: the least likely generated token's probability, `exp(min(logprob))`: the weakest step.
- `firstTokenMargin`: `p(top1) − p(top2)` of the first generated token. Classification, yes/no and
  multiple-choice answers are one token, and a near tie between the two best labels is the doubt that
  matters there; the other tokens (punctuation, end of turn) say little.

Logprobs are read from an OpenAI response: chat `choices[0].logprobs.content[]` (`logprob`,
`top_logprobs[]`) or text completions `choices[0].logprobs` (`tokens`, `token_logprobs`, `top_logprobs[]`
of token → logprob). A response without them (or with none usable) has confidence None: the router never
escalates on missing data, it counts it (`no_logprobs`).

`ask_for_logprobs` adds to a request body what a method needs (chat `logprobs: true` and, for the margin,
`top_logprobs: 2`; text completions `logprobs: 0` or `2`) unless the client asked for as much itself;
`restore` takes from an answer what the router added, so the client gets the shape it asked for.

Pure: dicts in, dicts and numbers out. Must not import an HTTP framework or see a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

MARGIN_ALTERNATIVES = 2
"""Alternatives per token that `firstTokenMargin` needs: the best two."""


class Method(StrEnum):
    MEAN_TOKEN_PROB = "meanTokenProb"
    MIN_TOKEN_PROB = "minTokenProb"
    FIRST_TOKEN_MARGIN = "firstTokenMargin"


class Escalation(BaseModel):
    """Re-ask `to` when an answer from `from` is less confident than `minConfidence` (non-streaming only)."""

    # As config.py's `_Model` (not imported: config imports this module).
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    from_tier: str = Field(alias="from", description="The tier whose answers are checked (asked for logprobs).")
    to: str = Field(description="The tier that answers instead when confidence is below minConfidence.")
    min_confidence: float = Field(ge=0, le=1, description="Answers below this confidence are escalated.")
    method: Method = Field(
        Method.MEAN_TOKEN_PROB, description="meanTokenProb (default), minTokenProb or firstTokenMargin."
    )


class Outcome(StrEnum):
    """What happened to one answer of the `from` tier (the `outcome` label of tiered_router_escalations)."""

    ESCALATED = "escalated"
    KEPT = "kept"
    """Confident enough."""
    NO_LOGPROBS = "no_logprobs"
    """The answer carried no usable logprobs: kept, never escalated on missing data."""
    PRIVATE_KEPT = "private_kept"
    """Below the threshold, but private and `to` is external: kept."""
    STREAMING_SKIPPED = "streaming_skipped"
    FAILED = "failed"
    """The escalation call failed (or `to`'s breaker is open): the first answer was sent."""


HEADER_VALUES = {
    Outcome.ESCALATED: "escalated",
    Outcome.KEPT: "kept",
    Outcome.NO_LOGPROBS: "no-logprobs",
    Outcome.PRIVATE_KEPT: "private-kept",
    Outcome.STREAMING_SKIPPED: "skipped-streaming",
    Outcome.FAILED: "failed",
}
"""`x-tiered-escalation` response header values."""


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token's logprob and the alternatives' logprobs (best first, the token itself included)."""

    logprob: float
    top: tuple[float, ...] = ()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return min(0.0, float(value))  # a logprob above 0 is rounding; -inf stays (probability 0)


def _chat_tokens(logprobs: dict[str, Any]) -> list[Token] | None:
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    tokens = []
    for entry in content:
        if not isinstance(entry, dict) or (chosen := _number(entry.get("logprob"))) is None:
            return None
        alternatives = {entry.get("token"): chosen}
        for alt in entry.get("top_logprobs") or ():
            if isinstance(alt, dict) and (value := _number(alt.get("logprob"))) is not None:
                alternatives.setdefault(alt.get("token"), value)
        tokens.append(Token(chosen, tuple(sorted(alternatives.values(), reverse=True))))
    return tokens


def _completion_tokens(logprobs: dict[str, Any]) -> list[Token] | None:
    values, tops, names = logprobs.get("token_logprobs"), logprobs.get("top_logprobs"), logprobs.get("tokens")
    if not isinstance(values, list):
        return None
    tops = tops if isinstance(tops, list) else []
    names = names if isinstance(names, list) else []
    tokens = []
    for i, value in enumerate(values):
        if (chosen := _number(value)) is None:
            return None
        alternatives = {names[i] if i < len(names) else None: chosen}
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        for name, alt in top.items():
            if (alt_value := _number(alt)) is not None:
                alternatives.setdefault(name, alt_value)
        tokens.append(Token(chosen, tuple(sorted(alternatives.values(), reverse=True))))
    return tokens


def answer_tokens(response: Any) -> list[Token] | None:
    """The first choice's generated tokens with their logprobs, chat or text-completion shape; None when
    the response carries no (well-formed) logprobs."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    logprobs = choices[0].get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    return _chat_tokens(logprobs) if "content" in logprobs else _completion_tokens(logprobs)


def mean_token_prob(tokens: list[Token]) -> float | None:
    if not tokens:
        return None
    return math.exp(sum(t.logprob for t in tokens) / len(tokens))


def min_token_prob(tokens: list[Token]) -> float | None:
    return math.exp(min(t.logprob for t in tokens)) if tokens else None


def first_token_margin(tokens: list[Token]) -> float | None:
    """p(top1) − p(top2) of the first token; None without two alternatives to compare."""
    if not tokens or len(tokens[0].top) < MARGIN_ALTERNATIVES:
        return None
    best, second = tokens[0].top[:2]
    return math.exp(best) - math.exp(second)


CONFIDENCE = {
    Method.MEAN_TOKEN_PROB: mean_token_prob,
    Method.MIN_TOKEN_PROB: min_token_prob,
    Method.FIRST_TOKEN_MARGIN: first_token_margin,
}


def confidence(response: Any, method: Method) -> float | None:
    """How sure the answer is, in [0, 1], by `method`; None when the response has no usable logprobs."""
    tokens = answer_tokens(response)
    return None if tokens is None else CONFIDENCE[method](tokens)


def decide(value: float | None, escalation: Escalation, private: bool, to_external: bool) -> Outcome:
    """ESCALATED means "send it to `to`"; the caller turns a failed call into FAILED."""
    if value is None:
        return Outcome.NO_LOGPROBS
    if value >= escalation.min_confidence:
        return Outcome.KEPT
    if private and to_external:
        return Outcome.PRIVATE_KEPT
    return Outcome.ESCALATED


@dataclass(frozen=True, slots=True)
class Asked:
    """What the client itself asked for: logprobs at all, and how many alternatives per token."""

    logprobs: bool
    top: int


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def client_asked(body: dict[str, Any], chat: bool) -> Asked:
    if chat:
        return Asked(body.get("logprobs") is True, _count(body.get("top_logprobs")) or 0)
    top = _count(body.get("logprobs"))  # text completions: `logprobs` is the number of alternatives
    return Asked(top is not None, top or 0)


def ask_for_logprobs(body: dict[str, Any], chat: bool, method: Method) -> dict[str, Any]:
    """The fields to set on the request so its answer carries what `method` needs ({} when the client
    asked for as much itself)."""
    asked = client_asked(body, chat)
    need = MARGIN_ALTERNATIVES if method is Method.FIRST_TOKEN_MARGIN else 0
    if asked.logprobs and asked.top >= need:
        return {}
    if not chat:
        return {"logprobs": max(need, asked.top)}
    fields: dict[str, Any] = {"logprobs": True}
    if need > asked.top:
        fields["top_logprobs"] = need
    return fields


def _by_logprob(item: tuple[Any, Any]) -> float:
    value = _number(item[1])
    return -math.inf if value is None else value


def restore(response: dict[str, Any], asked: Asked, chat: bool) -> dict[str, Any]:
    """The answer as the client asked for it: without logprobs if it asked for none, else with at most the
    alternatives per token it asked for. Changes `response` in place and returns it."""
    for choice in response.get("choices") or ():
        if not isinstance(choice, dict) or not isinstance(choice.get("logprobs"), dict):
            continue
        if not asked.logprobs:
            choice["logprobs"] = None
            continue
        logprobs = choice["logprobs"]
        if chat:
            for entry in logprobs.get("content") or ():
                if isinstance(entry, dict) and isinstance(entry.get("top_logprobs"), list):
                    entry["top_logprobs"] = entry["top_logprobs"][: asked.top]
        elif isinstance(logprobs.get("top_logprobs"), list):
            logprobs["top_logprobs"] = [
                dict(sorted(top.items(), key=_by_logprob, reverse=True)[: asked.top]) if isinstance(top, dict) else top
                for top in logprobs["top_logprobs"]
            ]
    return response
