"""Which tier serves a request: `choose_tier(features, config, live) -> Decision`, a pure function.

It never sees an HTTP request: the server extracts `RequestFeatures` (only what routing needs) and a
`LiveState` snapshot (tiers in flight, open breakers, the clock) and applies the decision. Order:

1. `model` names a tier → that tier (`explicit`); `model: auto` → the first matching rule (`rule:<name>`;
   a classifier rule: `classifier`), else the default tier (`default`); anything else → no tier
   (`unknown-model`, a 404). Classifier and similarTo conditions read `RequestFeatures.signals`, computed
   by the server before this call (`tiered_router.learned`); a signal that is missing (the encoder timed
   out or failed) makes its rule not match, so routing goes on with the next rule.
2. Private requests whose tier is external go to the private local tier instead (`private`).
3. A local tier over its concurrency budget with its burst flag on sends the request to its burst target
   (`burst`), except private requests, which queue for a local slot (`queue=True`).
4. The attempt chain is the tier then its fallbacks, without tiers whose breaker is open and, for private
   requests, without external tiers. An empty chain means `unavailable` (a 503 with Retry-After).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tiered_router.config import AUTO_MODEL, Match, MatchScope, RouterConfig, TierKind

UNKNOWN_MODEL = "unknown-model"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class RouteSignals:
    """What the encoder said about a request's last user message."""

    scores: Mapping[str, float] = field(default_factory=dict)
    """Classifier head → probability that the request needs the frontier tier."""
    similarity: Mapping[int, float] = field(default_factory=dict)
    """Rule index → the best cosine similarity to that rule's `similarTo` examples."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Classifier head → the threshold it was trained for (a rule without its own threshold uses it)."""


NO_SIGNALS = RouteSignals()


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """What routing may know about a request."""

    model: str
    prompt_tokens: int = 0
    task: str | None = None
    """Normalised (`config.normalise_task`)."""
    text: str = ""
    """The last user message (a text completion: its prompt); what keyword and regex rules search by default."""
    private: bool = False
    system: str = ""
    """System and developer messages (scope `lastUserAndSystem`)."""
    conversation: str | None = None
    """Every message's text (scope `conversation`); None means the same as `text`."""
    signals: RouteSignals = NO_SIGNALS


@dataclass(frozen=True, slots=True)
class LiveState:
    """Control data the router keeps apart from the request path; read-only here."""

    in_flight: Mapping[str, int] = field(default_factory=dict)
    open_until: Mapping[str, float] = field(default_factory=dict)
    """Tier → monotonic time its breaker closes; a tier is skipped while `now` is before it."""
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str | None
    """The first tier to try; None when no tier can take the request (see `reason`)."""
    reason: str
    chain: tuple[str, ...] = ()
    """Tiers to try in order (`tier` first)."""
    queue: bool = False
    """Private overflow: wait for a slot on `tier` instead of going over its budget."""
    retry_after: int = 0
    """Seconds until a breaker may close, when `reason` is `unavailable`."""
    rule: int | None = None
    """Index of the rule that matched (`model: auto`); its token discipline applies wherever the request goes."""


def choose_tier(features: RequestFeatures, config: RouterConfig, live: LiveState) -> Decision:
    tiers = {t.name: t for t in config.tiers}
    rule = None
    if features.model == AUTO_MODEL:
        name, reason, rule = _by_rules(features, config)
    elif features.model in tiers:
        name, reason = features.model, "explicit"
    else:
        return Decision(None, UNKNOWN_MODEL)

    if features.private and tiers[name].kind is TierKind.EXTERNAL:
        local = private_local_tier(config)
        if local is None:
            return Decision(None, UNAVAILABLE)
        name, reason = local, "private"

    tier = tiers[name]
    queue = False
    over_budget = tier.concurrency is not None and live.in_flight.get(name, 0) >= tier.concurrency
    if over_budget and tier.burst and tier.burst_target is not None:
        if features.private and tiers[tier.burst_target].kind is TierKind.EXTERNAL:
            queue = True
        else:
            name, reason = tier.burst_target, "burst"

    chain = []
    for candidate in (name, *tiers[name].fallback):
        if candidate in chain or (features.private and tiers[candidate].kind is TierKind.EXTERNAL):
            continue
        if live.open_until.get(candidate, 0.0) > live.now:
            continue
        chain.append(candidate)
    if not chain:
        waits = [live.open_until[t] - live.now for t in (name, *tiers[name].fallback) if t in live.open_until]
        return Decision(None, UNAVAILABLE, retry_after=max(1, math.ceil(min(waits, default=1.0))))
    return Decision(chain[0], reason, tuple(chain), queue=queue and chain[0] == name, rule=rule)


def private_local_tier(config: RouterConfig) -> str | None:
    """Where private requests go when their chosen tier is external."""
    if config.privacy.local_tier:
        return config.privacy.local_tier
    if config.tier(config.default).kind is TierKind.LOCAL:
        return config.default
    return next((t.name for t in config.tiers if t.kind is TierKind.LOCAL), None)


CLASSIFIER_REASON = "classifier"


def rule_name(index: int, name: str | None) -> str:
    return name or f"rule-{index}"


def _by_rules(features: RequestFeatures, config: RouterConfig) -> tuple[str, str, int | None]:
    for i, rule in enumerate(config.rules):
        if _unmet(rule.match, features, i) is None:
            reason = CLASSIFIER_REASON if rule.match.classifier is not None else f"rule:{rule_name(i, rule.name)}"
            return rule.tier, reason, i
    return config.default, "default", None


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: str
    tier: str
    matched: bool
    unmet: str | None
    """The first condition that did not hold (None when the rule matched)."""


def trace_rules(features: RequestFeatures, config: RouterConfig) -> list[RuleTrace]:
    """Every rule with whether it matched and, if not, why: what `/v1/tiered/explain` shows.

    It evaluates all rules (routing stops at the first match); `choose_tier` says which one won."""
    traces = []
    for i, rule in enumerate(config.rules):
        unmet = _unmet(rule.match, features, i)
        traces.append(RuleTrace(rule_name(i, rule.name), rule.tier, unmet is None, unmet))
    return traces


def scoped_text(scope: MatchScope | None, features: RequestFeatures) -> str:
    """The text a rule's keywords and regex look at."""
    if scope is None or scope is MatchScope.LAST_USER:
        return features.text
    if scope is MatchScope.CONVERSATION:
        return features.text if features.conversation is None else features.conversation
    return f"{features.system}\n{features.text}" if features.system else features.text


def _unmet(match: Match, features: RequestFeatures, index: int) -> str | None:
    """The first condition of `match` that does not hold, or None when the rule matches."""
    if match.task_types and features.task not in match.task_types:
        return "taskTypes"
    if match.min_prompt_tokens is not None and features.prompt_tokens < match.min_prompt_tokens:
        return "minPromptTokens"
    if match.max_prompt_tokens is not None and features.prompt_tokens > match.max_prompt_tokens:
        return "maxPromptTokens"
    keywords, regex = match.keyword_re, match.regex_re  # compiled once per config
    if keywords is not None or regex is not None:
        text = scoped_text(match.scope, features)
        if keywords is not None and keywords.search(text) is None:
            return "keywords"
        if regex is not None and regex.search(text) is None:
            return "regex"
    if match.similar_to is not None:
        similarity = features.signals.similarity.get(index)
        if similarity is None:
            return "similarTo (no embedding: skipped)"
        if similarity < match.similar_to.threshold:
            return "similarTo"
    if match.classifier is not None:
        head = match.classifier.head
        score = features.signals.scores.get(head)
        threshold = match.classifier.threshold
        if threshold is None:
            threshold = features.signals.thresholds.get(head)
        if score is None or threshold is None:
            return "classifier (no score: skipped)"
        if score < threshold:
            return "classifier"
    return None


def estimate_tokens(chars: int) -> int:
    """A rough token count from characters (about 4 characters per token for English text)."""
    return (chars + 3) // 4
