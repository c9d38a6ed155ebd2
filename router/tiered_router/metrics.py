"""Prometheus metrics of one router process, in its own registry (no global state).

Gauges that mirror control data (requests in flight, breaker state) are read at scrape time by a custom
collector, so the request path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Router overhead is sub-millisecond when healthy; upstream latency spans ms to minutes.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._cache: dict[tuple[str, ...], tuple[Any, ...]] = {}
        r = self.registry
        self.requests = Counter(
            "tiered_router_requests",
            "Requests answered.",
            ["tier", "team", "feature", "reason", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "tiered_router_tokens",
            "Tokens served (direction: input|output).",
            ["tier", "direction"],
            registry=r,
        )
        self.estimated = Counter(
            "tiered_router_estimated_usage", "Responses without upstream usage.", ["tier"], registry=r
        )
        self.cost = Counter(
            "tiered_router_cost_usd", "Cost of served tokens in USD.", ["tier", "team", "feature"], registry=r
        )
        self.baseline_cost = Counter(
            "tiered_router_baseline_cost_usd",
            "What the baseline tier would have charged for the same tokens.",
            ["tier", "team", "feature"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tiered_router_fallbacks",
            "Attempts after a failed one (from_tier = to_tier is a retry).",
            ["from_tier", "to_tier", "cause"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "tiered_router_upstream_errors", "Failed upstream attempts.", ["tier", "cause"], registry=r
        )
        self.escalations = Counter(
            "tiered_router_escalations",
            "Answers of the escalation `from` tier by outcome: escalated, kept, no_logprobs, private_kept, "
            "streaming_skipped, failed.",
            ["from", "to", "outcome"],
            registry=r,
        )
        self.unknown_tasks = Counter(
            "tiered_router_unknown_tasks",
            "Requests naming a task type no rule lists (task: the value, bounded like team and feature).",
            ["task"],
            registry=r,
        )
        self.reloads = Counter("tiered_router_config_reloads", "Config files loaded.", registry=r)
        self.reload_errors = Counter(
            "tiered_router_config_reload_errors",
            "Config or API key files rejected (last good one kept).",
            registry=r,
        )
        self.overhead = Histogram(
            "tiered_router_overhead_seconds",
            "Router time per request, excluding time waiting on the upstream.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tiered_router_upstream_seconds",
            "Upstream time from send to the last byte.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.route_signals = Counter(
            "tiered_router_route_signals",
            "Embeddings for classifier and similarTo rules (outcome: ok|cached|timeout|error; timeout and "
            "error skip those rules for the request).",
            ["outcome"],
            registry=r,
        )
        self.encoder_seconds = Histogram(
            "tiered_router_encoder_seconds",
            "Encoder time per batch of texts.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "tiered_router_cache",
            "Response cache lookups and stores (kind: exact|semantic; outcome: hit, miss, guarded — a semantic "
            "candidate refused as a negation or reversal —, stored, skipped — an answer not storable).",
            ["kind", "outcome"],
            registry=r,
        )
        self.cache_saved = Counter(
            "tiered_router_cache_saved_usd",
            "What the upstream calls answered from the cache would have cost (priced at the answering tier).",
            ["kind", "tier", "team", "feature"],
            registry=r,
        )
        self.route_score = Histogram(
            "tiered_router_route_score",
            "Classifier scores (probability a request needs the frontier tier) by head.",
            ["head"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
            registry=r,
        )
        self.feedback = Counter(
            "tiered_router_feedback",
            "Outcomes given to tasks (POST /v1/tiered/feedback), by the task's tier, team and feature.",
            ["outcome", "tier", "team", "feature"],
            registry=r,
        )
        self.resolved_cost = Counter(
            "tiered_router_resolved_cost_usd",
            "Cost of every call of tasks when they were marked resolved.",
            ["tier", "team", "feature"],
            registry=r,
        )
        self.ttft = Histogram(
            "tiered_router_time_to_first_token_seconds",
            "Streams: from request arrival to the first chunk sent.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cached_tokens = Counter(
            "tiered_router_cached_tokens",
            "Prompt tokens the upstream read from (kind: read) or wrote to (kind: write) its prompt cache; "
            "part of tiered_router_tokens{direction=input}.",
            ["tier", "kind"],
            registry=r,
        )
        self.discipline = Counter(
            "tiered_router_token_discipline",
            "Requests a rule's token discipline changed (action: clamped|defaulted max_tokens, truncated context).",
            ["rule", "action"],
            registry=r,
        )
        self.truncated_tokens = Counter(
            "tiered_router_truncated_tokens",
            "Estimated prompt tokens dropped by context truncation.",
            ["rule"],
            registry=r,
        )

    def answered(self, tier: str, team: str, feature: str, reason: str, status: str) -> None:
        self._children(tier, team, feature, reason, status)[0].inc()

    def served(
        self,
        tier: str,
        team: str,
        feature: str,
        reason: str,
        status: str,
        input_tokens: int,
        output_tokens: int,
        cost: float,
        baseline: float,
        upstream_seconds: float,
    ) -> None:
        """One answered and priced request: all its series in one cached lookup."""
        requests, tokens_in, tokens_out, spent, base, upstream = self._children(tier, team, feature, reason, status)
        requests.inc()
        tokens_in.inc(input_tokens)
        tokens_out.inc(output_tokens)
        spent.inc(cost)
        base.inc(baseline)
        upstream.observe(upstream_seconds)

    def _children(self, tier: str, team: str, feature: str, reason: str, status: str) -> tuple[Any, ...]:
        # prometheus_client's labels() costs a few microseconds per call; a request touches six series,
        # so their children are looked up once per label combination and kept.
        key = (tier, team, feature, reason, status)
        children = self._cache.get(key)
        if children is None:
            children = self._cache[key] = (
                self.requests.labels(tier, team, feature, reason, status),
                self.tokens.labels(tier, "input"),
                self.tokens.labels(tier, "output"),
                self.cost.labels(tier, team, feature),
                self.baseline_cost.labels(tier, team, feature),
                self.upstream_latency.labels(tier),
            )
        return children

    def watch(
        self,
        sample: Callable[[], Iterable[tuple[str, int, int, int]]],
        private_ready: Callable[[], bool],
        overflowed: Mapping[str, int],
    ) -> None:
        """Export live control data at scrape time: `sample()` yields (tier, in flight, queued, breaker);
        `private_ready()` says whether a local tier can take private traffic; `overflowed` counts claimed
        label values counted as `other`, by label."""
        self.registry.register(_LiveCollector(sample, private_ready, overflowed))


class _LiveCollector(Collector):
    def __init__(
        self,
        sample: Callable[[], Iterable[tuple[str, int, int, int]]],
        private_ready: Callable[[], bool],
        overflowed: Mapping[str, int],
    ) -> None:
        self.sample, self.private_ready, self.overflowed = sample, private_ready, overflowed

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        flight = GaugeMetricFamily("tiered_router_in_flight", "Requests in flight per tier.", labels=["tier"])
        queued = GaugeMetricFamily(
            "tiered_router_queued", "Private requests waiting for a slot on a tier.", labels=["tier"]
        )
        state = GaugeMetricFamily(
            "tiered_router_breaker_state",
            "Circuit breaker per tier: 0 closed, 1 half-open, 2 open.",
            labels=["tier"],
        )
        for tier, in_flight, waiting, breaker in self.sample():
            flight.add_metric([tier], in_flight)
            queued.add_metric([tier], waiting)
            state.add_metric([tier], breaker)
        ready = GaugeMetricFamily(
            "tiered_router_private_ready",
            "1 while some local tier can take private traffic (its breaker is not open), else 0.",
        )
        ready.add_metric([], 1 if self.private_ready() else 0)
        overflow = CounterMetricFamily(
            "tiered_router_label_overflow",
            "Claimed team, feature or task values counted as `other` (cap or allow-list).",
            labels=["label"],
        )
        for name, count in sorted(self.overflowed.items()):
            overflow.add_metric([name], count)
        yield from (flight, queued, state, ready, overflow)
