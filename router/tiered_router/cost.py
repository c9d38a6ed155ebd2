"""Tokens and money, as pure functions: per-tier prices, usage parsing, and a running cost ledger.

- External tiers: USD per million input and output tokens.
- Local (self-hosted) tiers: a replica costs `gpuHourUSD * gpusPerReplica` per hour and serves
  `tokensPerSecond` tokens, so every token (input or output) costs
  `gpuHourUSD * gpusPerReplica / (3600 * tokensPerSecond)`.
- Baseline: the same tokens priced at the baseline tier, i.e. what this traffic would have cost there.

Usage comes from the upstream's `usage` object (the last SSE event carrying one, for streams). When it is
absent the router estimates (prompt characters / 4; one token per streamed event or a quarter of the
completion's characters) and marks the record as estimated.

Provider prompt caches: `Usage.input_tokens` counts every prompt token, of which `cached_input_tokens` were
read from the provider's cache and `cache_write_tokens` written to it; those are priced at the tier's
`cachedInputPerMTok` / `cacheWritePerMTok` (default: its input price). Two usage shapes are read: OpenAI's
(`prompt_tokens` includes `prompt_tokens_details.cached_tokens`) and Anthropic's (`usage_from_anthropic`:
`input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tiered_router.config import Tier, TierKind

_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    cached_input_per_token: float | None = None
    """Prompt tokens read from the provider's cache; None: the input price."""
    cache_write_per_token: float | None = None
    """Prompt tokens written to the provider's cache; None: the input price."""

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        """`input_tokens` counts every prompt token; `cached_tokens` and `cache_write_tokens` are part of it."""
        cached = self.input_per_token if self.cached_input_per_token is None else self.cached_input_per_token
        write = self.input_per_token if self.cache_write_per_token is None else self.cache_write_per_token
        uncached = max(0, input_tokens - cached_tokens - cache_write_tokens)
        return (
            uncached * self.input_per_token
            + cached_tokens * cached
            + cache_write_tokens * write
            + output_tokens * self.output_per_token
        )


def tier_price(tier: Tier) -> Price:
    p = tier.pricing
    cached = None if p.cached_input_per_m_tok is None else p.cached_input_per_m_tok / 1e6
    write = None if p.cache_write_per_m_tok is None else p.cache_write_per_m_tok / 1e6
    if tier.kind is TierKind.EXTERNAL:
        return Price((p.input_per_m_tok or 0.0) / 1e6, (p.output_per_m_tok or 0.0) / 1e6, cached, write)
    per_token = (p.gpu_hour_usd or 0.0) * p.gpus_per_replica / (3600.0 * (p.tokens_per_second or 1.0))
    return Price(per_token, per_token, cached, write)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    """Every prompt token, cached ones included (OpenAI's `prompt_tokens`)."""
    output_tokens: int
    estimated: bool = False
    cached_input_tokens: int = 0
    """Of `input_tokens`: read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Of `input_tokens`: written to the provider's prompt cache (Anthropic's cache_creation_input_tokens)."""


def usage_from_json(body: bytes) -> Usage | None:
    """The `usage` of a completion response body, or None. Decodes only the usage object, not the body."""
    at = body.rfind(b'"usage"')
    while at > 0 and body[at - 1 : at] == b"\\":  # an escaped quote: text inside a string, look further left
        at = body.rfind(b'"usage"', 0, at)
    if at < 0:
        return None
    text = body[at + 7 :].decode("utf-8", "replace").lstrip()
    if not text.startswith(":"):
        return None
    try:
        value, _ = _decoder.raw_decode(text[1:].lstrip())
    except ValueError:
        return None
    return _usage(value)


def usage_from_sse(tail: bytes) -> Usage | None:
    """The last `usage` object in the final bytes of an SSE stream (each event is `data: {json}`)."""
    for event in reversed(tail.split(b"\n\n")):
        data = event.strip()
        if not data.startswith(b"data:") or b'"usage"' not in data:
            continue
        try:
            value = json.loads(data[5:])
        except ValueError:
            continue
        usage = _usage(value.get("usage")) if isinstance(value, dict) else None
        if usage is not None:
            return usage
    return None


_EVENT_SPLIT = re.compile(rb"(\r?\n\r?\n)")


def without_usage_events(events: bytes) -> bytes:
    """Whole SSE events minus usage-only ones (`choices: []` with `usage`): the chunk the router asked the
    upstream for on a client's behalf, which that client did not ask to receive."""
    pieces = _EVENT_SPLIT.split(events)
    kept = []
    for i in range(0, len(pieces), 2):
        event, separator = pieces[i], pieces[i + 1] if i + 1 < len(pieces) else b""
        if b'"usage"' in event and _is_usage_only(event):
            continue
        kept.append(event + separator)
    return b"".join(kept)


def _is_usage_only(event: bytes) -> bool:
    data = event.strip()
    if not data.startswith(b"data:"):
        return False
    try:
        value = json.loads(data[5:])
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("choices") == [] and value.get("usage") is not None


def _count(value: Any) -> int:
    """A token count from a usage field: a non-negative int, else 0 (absent, null or malformed)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(value: Any) -> Usage | None:
    """OpenAI's usage shape, or Anthropic's (some OpenAI-compatible gateways pass it through as is)."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return usage_from_anthropic(value)
    details = value.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    # Translated Anthropic usage carries its cache fields next to an inclusive prompt_tokens (LiteLLM) or
    # under `anthropic` (tiered_router.anthropic.openai_usage); cache writes have no OpenAI field.
    extra = value.get("anthropic")
    extra = extra if isinstance(extra, dict) else value
    cached = cached or _count(extra.get("cache_read_input_tokens"))
    written = _count(extra.get("cache_creation_input_tokens"))
    return Usage(prompt, completion, cached_input_tokens=min(cached, prompt), cache_write_tokens=written)


def usage_from_anthropic(value: Any) -> Usage | None:
    """An Anthropic Messages `usage` object (`input_tokens`, `output_tokens`, `cache_read_input_tokens`,
    `cache_creation_input_tokens`) as a `Usage`, or None if it is not one. Anthropic's `input_tokens`
    exclude the cache reads and writes, so the prompt is their sum. For a stream, merge `message_start`'s
    usage with the last `message_delta`'s `output_tokens` first."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("input_tokens"), value.get("output_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    read, written = _count(value.get("cache_read_input_tokens")), _count(value.get("cache_creation_input_tokens"))
    return Usage(prompt + read + written, completion, cached_input_tokens=read, cache_write_tokens=written)


@dataclass(slots=True)
class LedgerLine:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    estimated: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "baseline_cost_usd": self.baseline_cost_usd,
            "savings_usd": self.baseline_cost_usd - self.cost_usd,
            "estimated_requests": self.estimated,
        }


class CostLedger:
    """Running totals by (tier, team, feature) since start; served as JSON at /v1/tiered/costs."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str, str], LedgerLine] = {}

    def add(self, key: tuple[str, str, str], usage: Usage, cost: float, baseline: float) -> None:
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = LedgerLine()
        line.requests += 1
        line.input_tokens += usage.input_tokens
        line.cached_input_tokens += usage.cached_input_tokens
        line.cache_write_tokens += usage.cache_write_tokens
        line.output_tokens += usage.output_tokens
        line.cost_usd += cost
        line.baseline_cost_usd += baseline
        line.estimated += usage.estimated

    def summary(self, baseline_tier: str | None, team_only: str | None = None) -> dict[str, Any]:
        """Totals and rows; `team_only` keeps one team's rows (and totals over them): what a team's key sees."""
        total = LedgerLine()
        rows = []
        for (tier, team, feature), line in sorted(self.lines.items()):
            if team_only is not None and team != team_only:
                continue
            rows.append({"tier": tier, "team": team, "feature": feature, **line.as_dict()})
            total.requests += line.requests
            total.input_tokens += line.input_tokens
            total.cached_input_tokens += line.cached_input_tokens
            total.cache_write_tokens += line.cache_write_tokens
            total.output_tokens += line.output_tokens
            total.cost_usd += line.cost_usd
            total.baseline_cost_usd += line.baseline_cost_usd
            total.estimated += line.estimated
        return {
            "baseline_tier": baseline_tier,
            "team": team_only,
            "totals": total.as_dict(),
            "by_tier_team_feature": rows,
        }
