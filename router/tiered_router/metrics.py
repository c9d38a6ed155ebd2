"""Prometheus metrics of one router process, in its own registry (no global state).

Gauges that mirror control data (requests in flight, breaker state) are read at scrape time by a custom
collector, so the request path pays nothing for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tiered_router.breaker import Breakers

# Router overhead is sub-millisecond when healthy; upstream latency spans ms to minutes.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
            "Attempts moved to another tier.",
            ["from_tier", "to_tier", "cause"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "tiered_router_upstream_errors", "Failed upstream attempts.", ["tier", "cause"], registry=r
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
        self.ttft = Histogram(
            "tiered_router_time_to_first_token_seconds",
            "Streams: from request arrival to the first chunk sent.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def watch(self, in_flight: dict[str, int], breakers: Breakers, tiers: Callable[[], list[str]]) -> None:
        self.registry.register(_LiveCollector(in_flight, breakers, tiers))


class _LiveCollector(Collector):
    def __init__(self, in_flight: dict[str, int], breakers: Breakers, tiers: Callable[[], list[str]]):
        self.in_flight, self.breakers, self.tiers = in_flight, breakers, tiers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        flight = GaugeMetricFamily("tiered_router_in_flight", "Requests in flight per tier.", labels=["tier"])
        state = GaugeMetricFamily(
            "tiered_router_breaker_state",
            "Circuit breaker per tier: 0 closed, 1 half-open, 2 open.",
            labels=["tier"],
        )
        for tier in self.tiers():
            flight.add_metric([tier], self.in_flight.get(tier, 0))
            state.add_metric([tier], self.breakers.state(tier, now))
        yield flight
        yield state
