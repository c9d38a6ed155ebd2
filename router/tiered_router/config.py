"""`RouterConfig`: the router's whole configuration as one frozen, documented pydantic model.

The operator renders it from a RoutingPolicy (plus InferenceTier endpoints and the policy's burst status)
into a ConfigMap; the router loads it from the mounted file and reloads it when the file changes. Field
names are camelCase on the wire (like the CRDs) and snake_case in Python; `RouterConfig(...)` accepts both.

This module is pure: no HTTP or Kubernetes imports. Cross-field checks (every tier a rule, default,
baseline, fallback or burst target names must exist; prices must match the tier kind) live here so that a
bad file is rejected with a message a person can act on, before it replaces a good one.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tiered_router.budgets import Budget, BudgetSettings, TaskBudget
from tiered_router.cache import CacheSettings
from tiered_router.escalation import Escalation

AUTO_MODEL = "auto"
"""The `model` value that asks the router to choose the tier by rules."""

TierName = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class TierKind(StrEnum):
    LOCAL = "local"
    """Self-hosted in the cluster (an InferenceTier): private traffic may go here."""
    EXTERNAL = "external"
    """A third-party API: private traffic never goes here, not even as a fallback."""


class TierApi(StrEnum):
    """The API dialect a tier's upstream speaks."""

    OPENAI = "openai"
    """OpenAI-compatible: `<baseURL>/chat/completions` and `/completions`, forwarded as they are."""
    ANTHROPIC = "anthropic"
    """Anthropic's Messages API at `<baseURL>/messages`: translated both ways (`tiered_router.anthropic`)."""




class Pricing(_Model):
    """How a tier's tokens are priced. External tiers: per million tokens. Local tiers: from GPU time."""

    input_per_m_tok: float | None = Field(None, ge=0, description="USD per million input tokens (external).")
    output_per_m_tok: float | None = Field(None, ge=0, description="USD per million output tokens (external).")
    gpu_hour_usd: float | None = Field(None, ge=0, alias="gpuHourUSD", description="USD per GPU-hour (local).")
    gpus_per_replica: float = Field(1.0, gt=0, description="GPUs one replica holds (local).")
    tokens_per_second: float | None = Field(
        None, gt=0, description="Measured tokens (input + output) one replica serves per second (local)."
    )
    cached_input_per_m_tok: float | None = Field(
        None, ge=0, description="USD per million prompt tokens read from the upstream's cache; default: input price."
    )
    cache_write_per_m_tok: float | None = Field(
        None, ge=0, description="USD per million prompt tokens written to the upstream's cache; default: input price."
    )


class Tier(_Model):
    """One place requests can be sent: an OpenAI-compatible base URL."""

    name: TierName = Field(description="The name clients use as `model`; also the metrics label.")
    kind: TierKind = Field(TierKind.LOCAL, description="`local` (self-hosted) or `external`.")
    base_url: str = Field(
        alias="baseURL",
        pattern=r"^https?://",
        description="OpenAI-compatible API base, usually ending in /v1; the router appends /chat/completions.",
    )
    model: str | None = Field(None, description="Model name sent upstream; defaults to the tier name.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the upstream API key (sent as a Bearer token)."
    )
    pricing: Pricing = Field(default_factory=Pricing, description="How this tier's tokens are priced.")
    concurrency: int | None = Field(
        None, ge=1, description="Concurrency budget: requests in flight beyond it overflow when bursting."
    )
    burst: bool = Field(False, description="Burst active (from RoutingPolicy status): overflow to burstTarget.")
    burst_target: str | None = Field(None, description="Tier that takes the overflow while `burst` is on.")
    fallback: list[str] = Field(
        default_factory=list, description="Tiers to try, in order, when this one fails before the first byte."
    )
    api: TierApi = Field(
        TierApi.OPENAI, description="Upstream dialect: `openai`, or `anthropic` (Messages API, translated)."
    )
    default_max_tokens: int = Field(
        4096, ge=1, description="`anthropic` tiers: max_tokens sent when a request has none (Anthropic requires it)."
    )


    @property
    def upstream_model(self) -> str:
        return self.model or self.name


class MatchScope(StrEnum):
    """Which text of a chat request keyword and regex conditions look at (a text completion's prompt is all)."""

    LAST_USER = "lastUser"
    """The last message with role `user` (the default): what the caller is asking now."""
    LAST_USER_AND_SYSTEM = "lastUserAndSystem"
    """The system (and developer) messages and the last user message."""
    CONVERSATION = "conversation"
    """Every message's text."""


def normalise_task(value: str) -> str:
    """Task types compare case- and whitespace-insensitively: ` Extraction ` is `extraction`."""
    return value.strip().lower()


def keyword_pattern(keywords: list[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any keyword as whole words (`prove` not in "improve").

    A keyword of several words matches them with any whitespace between; `\\w` boundaries on both sides,
    written as lookarounds so keywords that start or end with punctuation (`c++`) still work.
    """
    bodies = [r"\s+".join(re.escape(word) for word in keyword.split()) for keyword in keywords]
    return re.compile(r"(?<!\w)(?:" + "|".join(bodies) + r")(?!\w)", re.IGNORECASE)


DEFAULT_ROUTE_HEAD = "route-v1"
"""The learned router the package ships (`tiered_router/heads/route-v1.json`, trained by `make train-router`)."""


class Classifier(_Model):
    """The learned router: the probability that a request needs the frontier tier, from its text alone."""

    head: str = Field(
        DEFAULT_ROUTE_HEAD,
        pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$",
        description="Which trained head scores the request (package data of the router).",
    )
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The rule matches when the score (x-tiered-route-score) is at least this; default: the "
        "operating point the head was trained for (in its metrics).",
    )


class SimilarTo(_Model):
    """Semantic match: the last user message is close to one of the examples (cosine of sentence embeddings)."""

    examples: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(min_length=1, max_length=256)
    threshold: float = Field(0.8, ge=0, le=1, description="Cosine similarity at least this to match.")


class Match(_Model):
    """Conditions of a rule; all given conditions must hold. A match without any condition matches everything
    and is accepted only on the last rule (on any other it would hide the rules after it)."""

    task_types: list[str] = Field(
        default_factory=list,
        description="Task types (x-tiered-task header or metadata.task), compared lower-cased and trimmed.",
    )
    min_prompt_tokens: int | None = Field(None, ge=0, description="Estimated prompt tokens at least this.")
    max_prompt_tokens: int | None = Field(None, ge=0, description="Estimated prompt tokens at most this.")
    keywords: list[str] = Field(
        default_factory=list,
        description="Any of these as whole words, case-insensitive, in the text `scope` names.",
    )
    regex: str | None = Field(None, description="Python regular expression searched in the text `scope` names.")
    scope: MatchScope | None = Field(
        None,
        description="Text keywords and regex look at: lastUser (default), lastUserAndSystem or conversation.",
    )
    classifier: Classifier | None = Field(
        None, description="The learned router's score (needs the encoder, extra `tiered[router-ml]`)."
    )
    similar_to: SimilarTo | None = Field(
        None, description="Close to one of these examples (needs the encoder, extra `tiered[router-ml]`)."
    )

    @field_validator("task_types")
    @classmethod
    def _normalise_tasks(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError(f"taskTypes {values!r} holds an empty task type")
        return [normalise_task(v) for v in values]

    @field_validator("keywords")
    @classmethod
    def _no_empty_keywords(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError(f"keywords {values!r} holds an empty keyword (it would match every request)")
        return values

    @model_validator(mode="after")
    def _check(self) -> Match:
        if self.regex is not None:
            if not self.regex:
                raise ValueError("regex is empty (it would match every request)")
            try:
                re.compile(self.regex)
            except re.error as error:
                raise ValueError(f"regex {self.regex!r} does not compile: {error}") from None
        if (
            self.min_prompt_tokens is not None
            and self.max_prompt_tokens is not None
            and self.min_prompt_tokens > self.max_prompt_tokens
        ):
            raise ValueError("minPromptTokens is greater than maxPromptTokens")
        return self

    @property
    def has_conditions(self) -> bool:
        return bool(
            self.task_types
            or self.keywords
            or self.regex is not None
            or self.min_prompt_tokens is not None
            or self.max_prompt_tokens is not None
            or self.classifier is not None
            or self.similar_to is not None
        )

    @cached_property
    def keyword_re(self) -> re.Pattern[str] | None:
        """The compiled keyword pattern, built once per config (not per request)."""
        return keyword_pattern(self.keywords) if self.keywords else None

    @cached_property
    def regex_re(self) -> re.Pattern[str] | None:
        return re.compile(self.regex) if self.regex is not None else None


class Rule(_Model):
    """`model: auto` requests go to `tier` when `match` holds; rules are tried in order."""

    name: str | None = Field(None, description="Shown in x-tiered-reason as `rule:<name>`; default `rule-<i>`.")
    match: Match = Field(default_factory=Match, description="Conditions; all given ones must hold.")
    tier: str = Field(description="Where matching `model: auto` requests go.")
    semantic_cache: bool | None = Field(
        None, description="Semantic cache for requests this rule routes: true opts in (with `cache.semantic`)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Completion-token cap for matching requests: a larger max_tokens / max_completion_tokens "
        "is clamped, a chat request without one gets it (x-tiered-max-tokens says so).",
    )
    max_context_tokens: int | None = Field(
        None,
        ge=1,
        description="Prompt budget (estimated tokens) for matching chat requests: the oldest turns are "
        "dropped until it fits; system messages and the last user turn stay (x-tiered-truncated says so).",
    )


class Privacy(_Model):
    """Which requests are private. Private requests are only ever sent to local tiers."""

    private_teams: list[str] = Field(default_factory=list, description="Every request from these teams.")
    private_header: str = Field(
        "x-tiered-private", description="A request with this header set to 1/true/yes is private."
    )
    local_tier: str | None = Field(
        None,
        description="Local tier for private requests whose chosen tier is external; default: "
        "the default tier if local, else the first local tier.",
    )
    queue_limit: int = Field(64, ge=0, description="Private requests waiting for a local slot, per tier.")
    queue_timeout_seconds: float = Field(10.0, gt=0, description="How long one may wait before a 503.")


DEFAULT_MAX_LABEL_VALUES = 100
OTHER_LABEL = "other"


class Attribution(_Model):
    """Bounds on the team and feature values callers may claim (they become metric labels and cost rows)."""

    features: list[str] = Field(
        default_factory=list,
        description="With API keys: features a caller may name (besides its key's own); others count as `other`.",
    )
    max_label_values: int = Field(
        DEFAULT_MAX_LABEL_VALUES,
        ge=1,
        le=10000,
        description="Distinct values kept per label (team, feature, task); later new ones count as `other`.",
    )


class EncoderSettings(_Model):
    """How the sentence encoder behind classifier and similarTo rules runs (one per router process)."""

    timeout_ms: float = Field(
        50.0, gt=0, description="Time budget per request; past it the encoder's rules are skipped and counted."
    )
    max_tokens: int = Field(128, ge=16, le=512, description="Tokens embedded per text (head and tail kept).")
    cache_entries: int = Field(10000, ge=0, description="Embeddings kept by text (LRU); 0 turns the cache off.")


class Timeouts(_Model):
    connect_seconds: float = Field(2.0, gt=0, description="TCP connect to an upstream.")
    read_seconds: float = Field(120.0, gt=0, description="Longest silence while reading an upstream reply.")
    pool_seconds: float = Field(5.0, gt=0, description="Waiting for a free pooled connection.")


class Breaker(_Model):
    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open a tier's breaker.")
    cooldown_seconds: float = Field(10.0, gt=0, description="How long it stays open before a trial.")


class RouterConfig(_Model):
    """Everything the router needs; one file, swapped atomically on reload."""

    tiers: list[Tier] = Field(min_length=1, description="Where requests can go; `model` names one of them.")
    default: str = Field(description="Tier for `model: auto` requests no rule matches.")
    baseline: str | None = Field(
        None, description="Tier whose prices measure savings (what this traffic would have cost there)."
    )
    rules: list[Rule] = Field(default_factory=list, description="For `model: auto`, tried in order.")
    privacy: Privacy = Field(default_factory=Privacy, description="Which requests must stay local.")
    api_keys_file: str | None = Field(
        None, description="YAML file of API keys mapped to teams; none means open (logged loudly)."
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")
    retries: int = Field(1, ge=0, le=2, description="Extra upstream attempts (along the fallback chain).")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    breaker: Breaker = Field(default_factory=Breaker, description="Per-tier circuit breaker.")
    max_connections: int = Field(256, ge=1, description="Upstream connection pool size (read at start).")
    attribution: Attribution | None = Field(
        None, description="Allowed features and the label cardinality cap; none means the defaults."
    )
    escalation: Escalation | None = Field(
        None, description="Re-ask `to` when an answer from `from` is less confident than `minConfidence`."
    )
    encoder: EncoderSettings = Field(
        default_factory=EncoderSettings, description="The encoder behind classifier and similarTo rules."
    )
    budgets: list[Budget] = Field(
        default_factory=list, description="Spend caps per team, feature or API key, daily and/or monthly (UTC)."
    )
    budget_settings: BudgetSettings = Field(
        default_factory=BudgetSettings, description="How budgets are enforced: local tiers, reservation, store."
    )
    task_budget: TaskBudget | None = Field(
        None, description="Per `x-tiered-task-id`: tokens and cost summed over a task's calls."
    )
    cache: CacheSettings | None = Field(
        None, description="Exact and semantic response caches; none (the default) turns both off."
    )
    prometheus_url: str | None = Field(
        None,
        alias="prometheusURL",
        pattern=r"^https?://",
        description="Prometheus holding the router's metrics: cost history is read from it (else from memory).",
    )

    @model_validator(mode="after")
    def _check_references(self) -> RouterConfig:
        names = [t.name for t in self.tiers]
        problems = []
        if len(set(names)) != len(names):
            problems.append(f"tier names must be unique, got {names}")
        if AUTO_MODEL in names:
            problems.append(f"{AUTO_MODEL!r} is reserved and cannot name a tier")
        known = set(names)

        def need(ref: str | None, where: str) -> None:
            if ref is not None and ref not in known:
                problems.append(f"{where} names unknown tier {ref!r} (tiers: {', '.join(names)})")

        need(self.default, "default")
        need(self.baseline, "baseline")
        need(self.privacy.local_tier, "privacy.localTier")
        for i, rule in enumerate(self.rules):
            need(rule.tier, f"rules[{i}].tier")
            if not rule.match.has_conditions and i < len(self.rules) - 1:
                problems.append(
                    f"rules[{i}].match has no condition, so it matches every request and the rules after it "
                    "never run; give it a condition, move it last, or use `default`"
                )
        for tier in self.tiers:
            need(tier.burst_target, f"tiers[{tier.name}].burstTarget")
            for ref in tier.fallback:
                need(ref, f"tiers[{tier.name}].fallback")
            if tier.burst and tier.burst_target is None:
                problems.append(f"tiers[{tier.name}]: burst is on but burstTarget is not set")
            if tier.burst_target == tier.name:
                problems.append(f"tiers[{tier.name}]: burstTarget cannot be the tier itself")
            if tier.name in tier.fallback:
                problems.append(f"tiers[{tier.name}].fallback lists the tier itself (`retries` repeats a tier)")
            if tier.base_url.rstrip("/").endswith(("/chat/completions", "/completions", "/messages")):
                problems.append(
                    f"tiers[{tier.name}].baseURL {tier.base_url!r} names an endpoint; give the API base "
                    "(e.g. https://host/v1): the router appends /chat/completions or /completions "
                    "(/messages for `api: anthropic`)"
                )
            problems.extend(_pricing_problems(tier))
        if self.escalation is not None:
            need(self.escalation.from_tier, "escalation.from")
            need(self.escalation.to, "escalation.to")
            if self.escalation.from_tier == self.escalation.to:
                problems.append(f"escalation.from and escalation.to are both {self.escalation.to!r}; they must differ")
        if self.privacy.local_tier and self.tier(self.privacy.local_tier).kind is not TierKind.LOCAL:
            problems.append(f"privacy.localTier {self.privacy.local_tier!r} must be a local tier")
        if self.privacy.private_teams and not any(t.kind is TierKind.LOCAL for t in self.tiers):
            problems.append("privacy.privateTeams is set but no tier is local: their requests could never be served")
        ids = [b.id for b in self.budgets]
        if len(set(ids)) != len(ids):
            problems.append(f"budgets must have distinct scopes (team, feature, apiKey), got {ids}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def needs_encoder(self) -> bool:
        """Some rule scores or compares embeddings: the router loads the encoder for this config."""
        return any(r.match.classifier is not None or r.match.similar_to is not None for r in self.rules)

    @property
    def bounds(self) -> Attribution:
        return self.attribution or Attribution()

    def tier(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)


def _pricing_problems(tier: Tier) -> list[str]:
    p = tier.pricing
    if tier.kind is TierKind.EXTERNAL and (p.input_per_m_tok is None or p.output_per_m_tok is None):
        return [f"tiers[{tier.name}]: an external tier needs pricing.inputPerMTok and outputPerMTok"]
    if tier.kind is TierKind.LOCAL and (p.gpu_hour_usd is None or p.tokens_per_second is None):
        return [f"tiers[{tier.name}]: a local tier needs pricing.gpuHourUSD and tokensPerSecond"]
    return []


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a YAML (or JSON) config file; raises ValueError with the reason."""
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return RouterConfig.model_validate(data)
