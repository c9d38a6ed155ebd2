"""Cost per resolved task, the bounded call log, the history ring and break-even (pure)."""

from __future__ import annotations

import pytest
from tiered_router.attribution import task_id
from tiered_router.config import RouterConfig
from tiered_router.economics import break_even
from tiered_router.history import HistoryRing, prometheus_queries
from tiered_router.outcomes import CallLog, Outcome, Reports, task_key


def call(log: CallLog, request: str, task: str | None, cost: float, tier: str = "small", **kw: object) -> None:
    args = {"team": "search", "feature": "qa", "user": "u1", "escalation": False, "cache_hit": False, **kw}
    log.add(
        100.0, request, task, tier, str(args["team"]), str(args["feature"]), str(args["user"]), 10, 5, cost, 2 * cost,
        bool(args["escalation"]), bool(args["cache_hit"]),
    )  # fmt: skip


def test_task_id_reads_the_header_then_metadata():
    assert task_id(" t-1 ", {"task_id": "t-2"}) == "t-1"
    assert task_id(None, {"task_id": "t-2"}) == "t-2"
    assert task_id("", {"task_id": 7}) is None
    assert task_id("x" * 300, {}) == "x" * 128


def test_cost_per_resolved_task_charges_unresolved_tasks_to_resolved_ones():
    log = CallLog()
    call(log, "r1", "a", 0.010)  # task a: three calls over two requests, one of them escalated
    call(log, "r2", "a", 0.001)
    call(log, "r2", "a", 0.100, tier="big", escalation=True)
    call(log, "r3", "b", 0.020)  # task b: one call, unresolved
    call(log, "r4", None, 0.005)  # no task id: the request is its own task
    call(log, "r5", "c", 0.0, cache_hit=True)  # task c: a cache hit, nothing paid upstream
    log.judge(log.find_task("r2", None), Outcome.RESOLVED, 0.9)  # by a request id of the task
    log.judge(log.find_task(None, "b"), Outcome.UNRESOLVED, None)
    log.judge(log.find_task("r4", None), Outcome.RESOLVED, None)
    log.judge(log.find_task(None, "c"), Outcome.RESOLVED, None)
    report = log.resolution()
    totals = report["totals"]
    assert totals["tasks_judged"] == 4 and totals["tasks_resolved"] == 3
    assert totals["calls"] == 6
    assert totals["judged_cost_usd"] == pytest.approx(0.136)
    assert totals["cost_per_resolved_task_usd"] == pytest.approx(0.136 / 3)
    assert totals["resolution_rate"] == pytest.approx(0.75)
    by_tier = {row["tier"]: row for row in report["by_tier"]}
    assert by_tier["big"]["tasks_resolved"] == 1  # task a ended on the escalation tier
    assert by_tier["big"]["cost_per_resolved_task_usd"] == pytest.approx(0.111)
    assert by_tier["small"]["resolution_rate"] == pytest.approx(2 / 3)
    assert log.rates() == {
        "requests": 5,
        "escalated": 1,
        "cache_hits": 1,
        "escalation_rate": 0.2,
        "cache_hit_rate": 0.2,
    }


def test_the_latest_outcome_counts_and_resolution_is_reported_once():
    log = CallLog()
    call(log, "r1", "a", 0.01)
    task = log.find_task(None, "a")
    assert log.judge(task, Outcome.UNRESOLVED, None).newly_resolved is False
    assert log.judge(task, Outcome.RESOLVED, 1.0).newly_resolved is True
    assert log.judge(task, Outcome.RESOLVED, 1.0).newly_resolved is False
    assert log.resolution()["totals"]["tasks_resolved"] == 1


def test_team_scope_sees_only_its_tasks_and_users():
    log = CallLog()
    call(log, "r1", "a", 0.01, team="search", user="ann")
    call(log, "r2", "b", 0.02, team="legal", user="bob")
    for key in ("a", "b"):
        log.judge(log.find_task(None, key), Outcome.RESOLVED, None)
    assert [row["team"] for row in log.resolution("legal")["by_team"]] == ["legal"]
    assert [row["user"] for row in log.by_user("legal")] == ["bob"]
    assert log.rates("legal")["requests"] == 1


def test_the_call_log_is_bounded_by_count_and_age():
    log = CallLog(max_requests=3, max_age=60)
    for i in range(5):
        log.add(float(i), f"r{i}", None, "small", "t", "f", "u", 1, 1, 0.0, 0.0)
    assert list(log.requests) == ["r2", "r3", "r4"]
    assert len(log.tasks) == 3
    log.add(100.0, "late", None, "small", "t", "f", "u", 1, 1, 0.0, 0.0)
    assert list(log.requests) == ["late"]
    assert log.find_task("r2", None) is None
    assert task_key(None, "late") in log.tasks


def test_history_ring_rebuckets_by_tier_and_drops_old_buckets():
    ring = HistoryRing(step=10, span=60)
    for t in range(0, 120, 5):  # one call every 5 s for two minutes
        ring.add(float(t), ("small" if t % 10 else "big", "search", "qa"), 100, 10, 0.001, 0.01)
    assert len(ring.buckets) == 6  # 60 s of 10 s buckets
    series = ring.series(119.0, 60, 30)
    assert series["step_seconds"] == 30
    assert series["timestamps"] == [60.0, 90.0]
    assert series["tiers"]["small"]["requests"] == [3.0, 3.0]
    assert series["tiers"]["big"]["input_tokens"] == [300.0, 300.0]
    assert ring.series(119.0, 60, 30, team_only="legal")["tiers"] == {}
    assert ring.tokens_since(90.0) == 6 * 110  # the buckets at 90, 100 and 110 s, two calls each


def test_reports_count_an_escalated_request_once_in_the_ring():
    reports = Reports()
    reports.add(5.0, "r1", None, "small", "t", "f", "u", 10, 1, 0.001, 0.01)
    reports.add(5.0, "r1", None, "big", "t", "f", "u", 10, 1, 0.01, 0.01, escalation=True)
    series = reports.ring.series(9.0, 10, 10)
    assert series["tiers"]["small"]["requests"] == [1.0]
    assert series["tiers"]["big"]["requests"] == [0.0]
    assert series["tiers"]["big"]["cost_usd"] == [0.01]


def test_prometheus_queries_scope_a_team_and_drop_tokens():
    everything = prometheus_queries(60, None)
    assert everything["cost_usd"] == "sum by (tier) (increase(tiered_router_cost_usd_total{}[60s]))"
    scoped = prometheus_queries(60, 'se"arch')
    assert set(scoped) == {"requests", "cost_usd", "baseline_cost_usd"}
    assert scoped["requests"] == (
        'sum by (tier) (increase(tiered_router_requests_total{status="200",team="se\\"arch"}[60s]))'
    )


CONFIG = RouterConfig.model_validate(
    {
        "tiers": [
            {"name": "small", "baseURL": "http://a/v1", "pricing": {"gpuHourUSD": 3.5, "tokensPerSecond": 2000}},
            {
                "name": "frontier",
                "kind": "external",
                "baseURL": "http://b/v1",
                "pricing": {"inputPerMTok": 5, "outputPerMTok": 30},
            },
        ],
        "default": "small",
        "baseline": "frontier",
    }
)


@pytest.mark.parametrize(
    ("tokens_per_day", "replicas", "cheaper"),
    [(1e6, 1, "frontier"), (7.4e6, 1, "frontier"), (8e6, 1, "self-hosted"), (2e8, 2, "self-hosted")],
)
def test_break_even_of_one_replica_against_the_frontier(tokens_per_day, replicas, cheaper):
    result = break_even(CONFIG, 0.75, tokens_per_day)
    assert result["frontier_tier"] == "frontier"
    assert result["frontier_usd_per_token"] == pytest.approx(11.25e-6)  # 3/4 at $5/M, 1/4 at $30/M
    row = result["tiers"][0]
    assert row["replica_day_usd"] == pytest.approx(84.0)
    assert row["break_even_tokens_per_day"] == pytest.approx(84 / 11.25e-6)  # ≈ 7.47M tokens/day
    assert row["replicas_at_volume"] == replicas
    assert row["cheaper"] == cheaper
