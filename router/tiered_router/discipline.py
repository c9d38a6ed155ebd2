"""Token discipline, as pure functions: a rule's cap on the completion tokens a request may ask for, and
context truncation of old turns to a rule's prompt budget.

- `clamp_max_tokens`: a request asking for more than the cap (`max_tokens`, `max_completion_tokens`, either
  or both) gets the cap; a chat request asking for nothing gets `max_tokens` set to it (the field every
  OpenAI-compatible server reads). A text completion asking for nothing is left alone unless the cap is
  below OpenAI's default of 16 tokens for that endpoint, since setting the cap would raise its limit.
- `truncate_context`: while a chat request's estimated prompt is over the budget, drop its oldest turn. A
  turn starts at a user message and runs to the next one, so an assistant's tool calls leave together with
  their tool results (an orphaned tool result is a 400 upstream). System and developer messages and the
  last user turn (the last user message and everything after it) are always kept; if they alone are over
  the budget the request goes as it is, and the header says so.
- `apply_discipline`: both for one rule; what changed comes back as response headers, so a client sees it.

Everything else in the body, `prompt_cache_key` and `cache_control` blocks included, is left untouched.

Must not: do I/O, see an HTTP request, or estimate tokens other than with `policy.estimate_tokens`
(routing and truncation count alike).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tiered_router.policy import estimate_tokens

MAX_TOKENS_HEADER = "x-tiered-max-tokens"
"""`clamped 4000->512` or `set 512`: what the router did to the request's completion-token limit."""
TRUNCATED_HEADER = "x-tiered-truncated"
"""`dropped 6 of 9 messages, ~5200->1900 tokens (budget 2000)`: the context truncation done."""

MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")
"""Where chat requests ask for a completion-token limit (OpenAI's newer name first); text completions
only have `max_tokens`."""
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default `max_tokens` for `/v1/completions`."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Role and separators per chat message (OpenAI's own accounting counts 3-4)."""
SYSTEM_ROLES = frozenset({"system", "developer"})


class DisciplineError(ValueError):
    """The request's limit cannot be read (not a positive integer): answered 400 with `param`."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Clamp:
    asked: int | None
    """The largest limit the request asked for; None when it asked for none."""
    to: int

    @property
    def action(self) -> str:
        return "defaulted" if self.asked is None else "clamped"

    @property
    def header(self) -> str:
        # ASCII `->`: header values are Latin-1 on the wire.
        return f"set {self.to}" if self.asked is None else f"clamped {self.asked}->{self.to}"


@dataclass(frozen=True, slots=True)
class Truncation:
    dropped: int
    """Messages dropped."""
    messages: int
    """Messages the request had."""
    tokens_before: int
    tokens_after: int
    budget: int

    @property
    def header(self) -> str:
        over = ", still over" if self.tokens_after > self.budget else ""
        return (
            f"dropped {self.dropped} of {self.messages} messages, "
            f"~{self.tokens_before}->{self.tokens_after} tokens (budget {self.budget}{over})"
        )


@dataclass(frozen=True, slots=True)
class Disciplined:
    body: dict[str, Any]
    """The body to forward: the request's own object when nothing changed, else a changed copy."""
    clamp: Clamp | None = None
    truncation: Truncation | None = None
    untruncated_over_budget: int | None = None
    """Estimated prompt tokens when over the budget but nothing could be dropped (only kept turns)."""

    @property
    def changed(self) -> bool:
        return self.clamp is not None or self.truncation is not None

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        if self.clamp is not None:
            headers[MAX_TOKENS_HEADER] = self.clamp.header
        if self.truncation is not None:
            headers[TRUNCATED_HEADER] = self.truncation.header
        elif self.untruncated_over_budget is not None:
            headers[TRUNCATED_HEADER] = f"nothing to drop, ~{self.untruncated_over_budget} tokens over budget"
        return headers


def _limit(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        # Not clamped blindly: a lax upstream could read "5000" as 5000 and slip past the cap.
        raise DisciplineError(f"`{key}` must be a positive integer, got {value!r}", key)
    return value


def clamp_max_tokens(body: dict[str, Any], chat: bool, cap: int) -> tuple[dict[str, Any], Clamp | None]:
    """`body` with its completion-token limit at most `cap` (a copy when changed), and what was done."""
    keys = MAX_TOKEN_FIELDS if chat else ("max_tokens",)
    asked = {key: limit for key in keys if (limit := _limit(body, key)) is not None}
    if not asked:
        if not chat and cap >= COMPLETIONS_DEFAULT_MAX_TOKENS:
            return body, None
        return {**body, "max_tokens": cap}, Clamp(None, cap)
    over = {key: limit for key, limit in asked.items() if limit > cap}
    if not over:
        return body, None
    return {**body, **dict.fromkeys(over, cap)}, Clamp(max(over.values()), cap)


def message_tokens(message: Any) -> int:
    """Estimated tokens of one chat message: its text parts, tool calls and a fixed overhead."""
    if not isinstance(message, dict):
        return MESSAGE_OVERHEAD_TOKENS
    content = message.get("content")
    chars = 0
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    calls = message.get("tool_calls")
    if calls:
        chars += len(json.dumps(calls))
    return estimate_tokens(chars) + MESSAGE_OVERHEAD_TOKENS


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def truncate_context(messages: list[Any], budget: int) -> tuple[list[Any], Truncation | None, int]:
    """(the messages to send, the truncation done or None, their estimated tokens); see the module doc."""
    sizes = [message_tokens(m) for m in messages]
    total = sum(sizes)
    if total <= budget:
        return messages, None, total
    last_user = max((i for i, m in enumerate(messages) if _role(m) == "user"), default=None)
    if last_user is None:
        return messages, None, total
    turns: list[list[int]] = []  # droppable message indexes, oldest turn first
    for i in range(last_user):
        if _role(messages[i]) in SYSTEM_ROLES:
            continue
        if not turns or _role(messages[i]) == "user":
            turns.append([])
        turns[-1].append(i)
    dropped: set[int] = set()
    after = total
    for turn in turns:
        if after <= budget:
            break
        dropped.update(turn)
        after -= sum(sizes[i] for i in turn)
    if not dropped:
        return messages, None, total
    kept = [m for i, m in enumerate(messages) if i not in dropped]
    return kept, Truncation(len(dropped), len(messages), total, after, budget), after


def apply_discipline(
    body: dict[str, Any], chat: bool, max_tokens: int | None, max_context_tokens: int | None
) -> Disciplined:
    """A rule's caps applied to a request body (the body is never mutated). Raises DisciplineError."""
    clamp = None
    if max_tokens is not None:
        body, clamp = clamp_max_tokens(body, chat, max_tokens)
    truncation = None
    over = None
    messages = body.get("messages")
    if max_context_tokens is not None and chat and isinstance(messages, list):
        kept, truncation, tokens = truncate_context(messages, max_context_tokens)
        if truncation is not None:
            body = {**body, "messages": kept}
        elif tokens > max_context_tokens:
            over = tokens - max_context_tokens
    return Disciplined(body, clamp, truncation, over)
