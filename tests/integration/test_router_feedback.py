"""Request ids, feedback and cost per resolved task, with a real router and fake upstreams on loopback.

One module-scoped router (escalation `small` → `big`, the exact cache on) serves every case; each case
names its own feature and task ids, so its calls are told apart in /v1/tiered/costs. The task cost a case
expects is read from the ledger's rows for its feature: the sum of every call the router priced.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from router_bed import FakeUpstream, Router, base_config, router

pytestmark = pytest.mark.integration

KEYS = {"keys": [{"key": "sk-search", "team": "search"}, {"key": "sk-legal", "team": "legal"},
                 {"key": "sk-admin", "team": "platform", "admin": True}]}  # fmt: skip
ADMIN = {"Authorization": "Bearer sk-admin"}
FEATURES = ["ids", "multi", "escalated", "cached", "tenancy", "metrics-fb", "users"]
"""With API keys a caller may name only allow-listed features (docs/router.md, Tenancy)."""


@pytest.fixture(scope="module")
def rt(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    tmp = tmp_path_factory.mktemp("feedback")
    keys = tmp / "keys.yaml"
    keys.write_text(yaml.safe_dump(KEYS))
    config = base_config(
        router_fakes,
        escalation={"from": "small", "to": "big", "minConfidence": 0.7},
        cache={"exact": {"ttlSeconds": 300}},
        apiKeysFile=str(keys),
        attribution={"features": FEATURES},
        privacy={},
    )
    with router(config, tmp) as process:
        yield process


@pytest.fixture(autouse=True)
def confident(router_fakes: dict[str, FakeUpstream]) -> None:
    for fake in router_fakes.values():
        fake.reset()  # logprob -0.05: confident, no escalation unless a case lowers it


def ask(rt: Router, feature: str, key: str = "sk-search", task: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "x-tiered-feature": feature}
    if task is not None:
        headers["x-tiered-task-id"] = task
    payload = {"model": "auto", "messages": [{"role": "user", "content": f"hello {uuid.uuid4().hex[:8]}"}], **body}
    reply = rt.http.post("/v1/chat/completions", json=payload, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply


def feedback(rt: Router, key: str = "sk-search", **body: Any) -> httpx.Response:
    return rt.http.post("/v1/tiered/feedback", json=body, headers={"Authorization": f"Bearer {key}"})


def costs(rt: Router, key: str = "sk-admin") -> dict[str, Any]:
    return rt.http.get("/v1/tiered/costs", headers={"Authorization": f"Bearer {key}"}).json()  # type: ignore[no-any-return]


def feature_cost(rt: Router, feature: str) -> float:
    return sum(row["cost_usd"] for row in costs(rt)["by_tier_team_feature"] if row["feature"] == feature)


def by_feature(rt: Router, feature: str, key: str = "sk-admin") -> dict[str, Any]:
    rows = costs(rt, key)["resolution"]["by_feature"]
    return next(row for row in rows if row["feature"] == feature)


def test_every_reply_carries_a_request_id_and_the_body_id_is_the_upstream_s(rt: Router) -> None:
    reply = ask(rt, "ids")
    request_id = reply.headers["x-tiered-request-id"]
    assert len(request_id) == 32 and reply.json()["id"] != request_id
    streamed = ask(rt, "ids", stream=True)
    assert streamed.headers["x-tiered-request-id"] not in (request_id, "")
    assert b"data:" in streamed.content
    missing = rt.http.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": "Bearer sk-search"},
    )
    assert missing.status_code == 404 and missing.headers["x-tiered-request-id"]


def test_cost_per_resolved_task_across_multi_call_tasks(rt: Router) -> None:
    task_a, task_b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    for _ in range(3):
        ask(rt, "multi", task=task_a)
    # metadata.task_id names the task too (the header wins when both are given)
    ask(rt, "multi", metadata={"task_id": task_a})
    b_reply = ask(rt, "multi", task=task_b)
    judged = feedback(rt, task_id=task_a, outcome="resolved", score=0.9).json()
    assert judged["requests"] == 4 and judged["calls"] == 4 and judged["outcome"] == "resolved"
    feedback(rt, request_id=b_reply.headers["x-tiered-request-id"], outcome="unresolved").raise_for_status()
    row = by_feature(rt, "multi")
    total = feature_cost(rt, "multi")
    assert row["tasks_judged"] == 2 and row["tasks_resolved"] == 1 and row["calls"] == 5
    assert row["judged_cost_usd"] == pytest.approx(total)
    assert row["cost_per_resolved_task_usd"] == pytest.approx(total)  # both tasks' cost over one resolution
    assert row["resolution_rate"] == 0.5
    assert row["resolved_cost_usd"] == pytest.approx(judged["cost_usd"])
    assert judged["cost_usd"] == pytest.approx(total * 4 / 5)  # five calls of the same size, four in task a


def test_an_escalated_call_counts_both_calls_cost(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    router_fakes["small"].control.post("/_fake/logprobs", json={"logprob": math.log(0.1)}).raise_for_status()
    before = costs(rt)["rates"]["escalated"]
    reply = ask(rt, "escalated")
    assert reply.headers["x-tiered-escalated"] == "1"
    tiers = {row["tier"] for row in costs(rt)["by_tier_team_feature"] if row["feature"] == "escalated"}
    assert tiers == {"small", "big"}  # both calls priced
    judged = feedback(rt, request_id=reply.headers["x-tiered-request-id"], outcome="resolved").json()
    assert judged["calls"] == 2 and judged["requests"] == 1 and judged["tier"] == "big"
    assert judged["cost_usd"] == pytest.approx(feature_cost(rt, "escalated"))
    assert by_feature(rt, "escalated")["cost_per_resolved_task_usd"] == pytest.approx(judged["cost_usd"])
    assert costs(rt)["rates"]["escalated"] == before + 1


def test_a_cache_hit_costs_nothing_upstream(rt: Router, router_fakes: dict[str, FakeUpstream]) -> None:
    task = f"c-{uuid.uuid4().hex}"
    same = {"messages": [{"role": "user", "content": f"cache me {task}"}], "temperature": 0}
    first = ask(rt, "cached", task=task, **same)
    upstream_calls = router_fakes["small"].requests
    second = ask(rt, "cached", task=task, **same)
    assert second.headers.get("x-tiered-cache") == "exact"
    assert router_fakes["small"].requests == upstream_calls  # the upstream was not asked again
    assert second.headers["x-tiered-request-id"] != first.headers["x-tiered-request-id"]
    judged = feedback(rt, request_id=second.headers["x-tiered-request-id"], outcome="resolved").json()
    assert judged["requests"] == 2 and judged["cost_usd"] == pytest.approx(feature_cost(rt, "cached"))
    assert judged["cost_usd"] > 0
    rates = costs(rt)["rates"]
    assert rates["cache_hits"] >= 1 and 0 < rates["cache_hit_rate"] < 1


def test_a_team_key_judges_and_sees_its_own_team_only(rt: Router) -> None:
    legal = ask(rt, "tenancy", key="sk-legal", task="shared-name")
    search = ask(rt, "tenancy", key="sk-search")
    other_team = feedback(rt, "sk-search", request_id=legal.headers["x-tiered-request-id"], outcome="resolved")
    assert other_team.status_code == 404
    feedback(rt, "sk-search", request_id=search.headers["x-tiered-request-id"], outcome="resolved").raise_for_status()
    feedback(rt, "sk-legal", task_id="shared-name", outcome="unresolved").raise_for_status()
    seen = costs(rt, "sk-search")
    assert seen["team"] == "search"
    assert {row["team"] for row in seen["resolution"]["by_team"]} == {"search"}
    assert {row["team"] for row in seen["by_user"]} <= {"search"}
    assert feedback(rt, "sk-nope", task_id="shared-name", outcome="resolved").status_code == 401


def test_feedback_is_checked(rt: Router) -> None:
    for body, param in [
        ({"outcome": "resolved"}, "request_id"),
        ({"task_id": "x", "outcome": "maybe"}, "outcome"),
        ({"task_id": "x", "outcome": "resolved", "score": "high"}, "score"),
    ]:
        reply = feedback(rt, **body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert feedback(rt, task_id="never-seen", outcome="resolved").status_code == 404


def test_feedback_metrics(rt: Router) -> None:
    reply = ask(rt, "metrics-fb")
    before = rt.metric("tiered_router_feedback_total", outcome="resolved", feature="metrics-fb")
    judged = feedback(rt, request_id=reply.headers["x-tiered-request-id"], outcome="resolved").json()
    assert rt.metric("tiered_router_feedback_total", outcome="resolved", feature="metrics-fb") == before + 1
    resolved = rt.metric("tiered_router_resolved_cost_usd_total", feature="metrics-fb")
    assert resolved == pytest.approx(judged["cost_usd"])


def test_end_users_and_history_agree_with_the_ledger(rt: Router) -> None:
    ask(rt, "users", user="user-42")
    ask(rt, "users", user="user-42")
    seen = {row["user"]: row for row in costs(rt)["by_user"] if row["team"] == "search"}
    assert seen["user-42"]["requests"] == 2 and seen["user-42"]["cost_usd"] > 0
    summary = costs(rt)
    history = rt.http.get("/v1/tiered/costs/history?window=3600&step=60", headers=ADMIN).json()
    assert history["source"] == "memory"
    tokens = sum(sum(t["input_tokens"]) + sum(t["output_tokens"]) for t in history["tiers"].values())
    cost = sum(sum(t["cost_usd"]) for t in history["tiers"].values())
    assert tokens == summary["totals"]["input_tokens"] + summary["totals"]["output_tokens"]
    assert cost == pytest.approx(summary["totals"]["cost_usd"])
    scoped = rt.http.get("/v1/tiered/costs/history", headers={"Authorization": "Bearer sk-legal"}).json()
    assert scoped["team"] == "legal"
    assert rt.http.get("/v1/tiered/costs/history").status_code == 401


def test_dashboard_assets_are_served(rt: Router) -> None:
    page = rt.http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-metric="total-cost"' in page.text and "http" not in page.text.replace("http://www.w3.org", "")
    assert rt.http.get("/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert rt.http.get("/dashboard/missing.js").status_code == 404
