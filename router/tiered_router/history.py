"""Cost history: a bounded in-memory ring of per-interval totals, and the same series read from Prometheus.

`HistoryRing` keeps one bucket per `step` seconds (10 s by default) for `span` seconds (6 h): per
(tier, team, feature) requests, input and output tokens, cost and baseline cost. Memory is bounded by
span / step buckets times the label combinations seen in each (themselves capped by `LabelBounds`).
`series()` re-buckets to a coarser step for a window and sums by tier, optionally for one team only.

`PrometheusHistory` answers the same question from the router's own counters in a Prometheus
(`prometheusURL`): it survives restarts and sums every router replica. Tokens carry no team label in the
router's metrics, so a team-scoped query has no token series (the cost API serves teams from the ring).

Must not: import the HTTP server or look at a request. `PrometheusHistory` blocks (prometheus-api-client
uses requests): call it off the event loop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("requests", "input_tokens", "output_tokens", "cost_usd", "baseline_cost_usd")
DEFAULT_STEP = 10.0
DEFAULT_SPAN = 6 * 3600.0


@dataclass(slots=True)
class Bucket:
    start: float
    lines: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class HistoryRing:
    step: float = DEFAULT_STEP
    span: float = DEFAULT_SPAN
    buckets: deque[Bucket] = field(default_factory=deque)

    def add(
        self,
        now: float,
        key: tuple[str, str, str],
        input_tokens: int,
        output_tokens: int,
        cost: float,
        baseline: float,
        new_request: bool = True,
    ) -> None:
        start = math.floor(now / self.step) * self.step
        if not self.buckets or self.buckets[-1].start < start:
            self.buckets.append(Bucket(start))
            while self.buckets and self.buckets[0].start <= start - self.span:
                self.buckets.popleft()
        bucket = self.buckets[-1]  # a clock stepping back adds to the newest bucket
        line = bucket.lines.get(key)
        if line is None:
            line = bucket.lines[key] = [0.0] * len(FIELDS)
        line[0] += new_request
        line[1] += input_tokens
        line[2] += output_tokens
        line[3] += cost
        line[4] += baseline

    def tokens_since(self, since: float) -> float:
        """Input plus output tokens in the buckets that end after `since` (every team): the bucket holding
        `since` counts whole, so a window shorter than a step still sees the traffic in it."""
        return sum(
            line[1] + line[2]
            for bucket in self.buckets
            if bucket.start + self.step > since
            for line in bucket.lines.values()
        )

    def series(self, now: float, window: float, step: float, team_only: str | None = None) -> dict[str, Any]:
        """Points every `step` seconds over the last `window` seconds, by tier (zero-filled)."""
        step = max(self.step, math.ceil(step / self.step) * self.step)
        window = min(window, self.span)
        end = math.floor(now / step) * step + step
        begin = end - math.ceil(window / step) * step
        starts = [begin + i * step for i in range(round((end - begin) / step))]
        tiers: dict[str, list[list[float]]] = {}
        for bucket in self.buckets:
            if bucket.start < begin:
                continue
            at = int((bucket.start - begin) // step)
            if at >= len(starts):
                continue
            for (tier, team, _feature), line in bucket.lines.items():
                if team_only is not None and team != team_only:
                    continue
                points = tiers.get(tier)
                if points is None:
                    points = tiers[tier] = [[0.0] * len(FIELDS) for _ in starts]
                for i, value in enumerate(line):
                    points[at][i] += value
        return {
            "source": "memory",
            "step_seconds": step,
            "start": begin,
            "end": end,
            "timestamps": starts,
            "tiers": {
                tier: {name: [p[i] for p in points] for i, name in enumerate(FIELDS)}
                for tier, points in sorted(tiers.items())
            },
        }


PROMETHEUS_QUERIES = {
    "requests": 'sum by (tier) (increase(tiered_router_requests_total{{status="200"{team}}}[{step}s]))',
    "input_tokens": 'sum by (tier) (increase(tiered_router_tokens_total{{direction="input"}}[{step}s]))',
    "output_tokens": 'sum by (tier) (increase(tiered_router_tokens_total{{direction="output"}}[{step}s]))',
    "cost_usd": "sum by (tier) (increase(tiered_router_cost_usd_total{{{team_only}}}[{step}s]))",
    "baseline_cost_usd": "sum by (tier) (increase(tiered_router_baseline_cost_usd_total{{{team_only}}}[{step}s]))",
}
TOKEN_FIELDS = frozenset({"input_tokens", "output_tokens"})


def prometheus_queries(step: float, team_only: str | None) -> dict[str, str]:
    """PromQL per series field; a team scope drops the token series (no team label on tokens)."""
    quoted = (team_only or "").replace("\\", "\\\\").replace('"', '\\"')
    team = f',team="{quoted}"' if team_only is not None else ""
    queries = {}
    for name, template in PROMETHEUS_QUERIES.items():
        if team_only is not None and name in TOKEN_FIELDS:
            continue
        queries[name] = template.format(step=int(step), team=team, team_only=team.lstrip(","))
    return queries


class PrometheusHistory:
    """Cost series from a Prometheus holding the router's metrics (blocking; run it in a thread)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        from prometheus_api_client import PrometheusConnect

        self.url = url
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout)

    def series(self, now: float, window: float, step: float, team_only: str | None = None) -> dict[str, Any]:
        from datetime import UTC, datetime

        step = max(1.0, step)
        end = math.floor(now / step) * step + step
        begin = end - math.ceil(window / step) * step
        starts = [begin + i * step for i in range(round((end - begin) / step))]
        tiers: dict[str, dict[str, list[float]]] = {}
        for name, query in prometheus_queries(step, team_only).items():
            result = self.client.custom_query_range(
                query,
                # Evaluated at each bucket's end: increase(...[step]) at t is the bucket (t - step, t].
                start_time=datetime.fromtimestamp(begin + step, UTC),
                end_time=datetime.fromtimestamp(end, UTC),
                step=str(int(step)),
            )
            for item in result:
                tier = item["metric"].get("tier", "unknown")
                values = tiers.setdefault(tier, {})
                points = values.setdefault(name, [0.0] * len(starts))
                for stamp, value in item["values"]:
                    # A range point at t covers (t - step, t]: it is the bucket that starts at t - step.
                    at = round((float(stamp) - step - begin) / step)
                    if 0 <= at < len(starts) and not math.isnan(float(value)):
                        points[at] += float(value)
        for values in tiers.values():
            for name in prometheus_queries(step, team_only):
                values.setdefault(name, [0.0] * len(starts))
        return {
            "source": "prometheus",
            "step_seconds": step,
            "start": begin,
            "end": end,
            "timestamps": starts,
            "tiers": dict(sorted(tiers.items())),
        }
