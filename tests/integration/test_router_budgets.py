"""Budgets through real router processes: downgrade and reject under concurrent requests, spend kept in the
project's Kubernetes API emulator (a ConfigMap) across a restart and shared by two routers, task budgets.

Real fake-upstream, router and emulator processes on loopback. Concurrency is made real with the fake's
`hold` mode (each admitted stream waits upstream until released), so every admitted request holds its
reservation at once; waits are bounded polls, never timed asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from router_bed import FakeUpstream, Router, base_config, router
from tiered_devstack.cluster import EmulatorProcess, running_emulator

pytestmark = pytest.mark.integration

USAGE = {"prompt_tokens": 10, "completion_tokens": 50}
"""What the fakes report per answer: on `big` ($5/$30 per M) `COST`."""
COST = 10 * 5e-6 + 50 * 30e-6
MAX_TOKENS = 100
BIG_WORST = 1 * 5e-6 + MAX_TOKENS * 30e-6
"""The worst case `big` reserves for one request ("hi": one estimated prompt token)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("emulator")) as emulator:
        yield emulator


@pytest.fixture
def fakes(router_fakes: dict[str, FakeUpstream]) -> Iterator[dict[str, FakeUpstream]]:
    for fake in router_fakes.values():
        fake.reset()
        fake.mode("ok", usage=USAGE)
    yield router_fakes
    for fake in router_fakes.values():
        fake.release()
        fake.reset()


def budget_config(up: dict[str, FakeUpstream], budgets: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    config = base_config(up, budgets=budgets)
    if settings:
        config["budgetSettings"] = settings
    return config


def store(cluster: EmulatorProcess, name: str, sync: float = 0.3) -> dict[str, Any]:
    return {"configMap": name, "namespace": "default", "syncSeconds": sync, "kubeconfig": str(cluster.kubeconfig)}


@contextlib.contextmanager
def replica(config: dict[str, Any], tmp: Path, name: str) -> Iterator[Router]:
    """A router process whose pod name (its key in the spend ConfigMap) is `name`."""
    tmp.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, {"TIERED_POD_NAME": name}), router(config, tmp) as process:
        yield process


def chat(url: str, team: str = "acme", stream: bool = False, **extra: Any) -> httpx.Response:
    body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
            "stream": stream, **extra.pop("body", {})}
    headers = {"x-tiered-team": team, **extra.pop("headers", {})}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


async def concurrent(rt: Router, hold: FakeUpstream, count: int) -> list[httpx.Response]:
    """`count` streamed requests at once; the admitted ones wait upstream (hold) until all were answered or
    held, then the fake releases them."""
    hold.mode("hold", usage=USAGE)
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
                "stream": True}

        async def one() -> httpx.Response:
            response = await client.post(f"{rt.url}/v1/chat/completions", json=body, headers={"x-tiered-team": "acme"})
            return response

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # every request is either answered (429 or downgraded) or held
            done = sum(t.done() for t in tasks)
            held = await asyncio.to_thread(lambda: hold.requests)
            if done + held >= count:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(hold.release)
        return await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_reject_under_concurrency_admits_only_what_the_budget_covers(
    fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    limit = 0.01  # three worst cases (0.009015) fit, a fourth does not
    config = budget_config(fakes, [{"team": "acme", "dailyUSD": limit, "onExceed": "reject"}])
    with router(config, tmp_path) as rt:
        replies = await concurrent(rt, fakes["big"], 8)
        served = [r for r in replies if r.status_code == 200]
        rejected = [r for r in replies if r.status_code == 429]
        assert (len(served), len(rejected)) == (3, 5), [r.status_code for r in replies]
        error = rejected[0].json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
        assert "team=acme" in error["message"] and "daily limit 0.01 USD" in error["message"]
        assert "resets at" in error["message"] and error["message"].endswith("T00:00:00Z")
        assert 1 <= int(rejected[0].headers["Retry-After"]) <= 86400
        spent = rt.metric("tiered_router_budget_spend_usd", budget="team=acme")
        assert spent == pytest.approx(3 * COST) and spent <= limit  # settled at the real cost, no overshoot
        assert rt.metric("tiered_router_budget_exceeded_total", budget="team=acme", action="rejected") == 5
        other = chat(rt.url, team="zeta")  # another team has no budget
        assert other.status_code == 200 and "x-tiered-budget" not in other.headers


async def test_downgrade_under_concurrency_sends_the_rest_to_the_cheapest_tier(
    fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    config = budget_config(fakes, [{"team": "acme", "monthlyUSD": 2.5 * BIG_WORST}])
    with router(config, tmp_path) as rt:
        replies = await concurrent(rt, fakes["big"], 6)
        assert [r.status_code for r in replies] == [200] * 6
        tiers = sorted((r.headers["x-tiered-tier"], r.headers.get("x-tiered-budget", "")) for r in replies)
        # Two worst cases fit on big at once; the other four go to `edge` (local, exempt, the cheapest price).
        assert tiers == [("big", "")] * 2 + [("edge", "downgraded")] * 4
        assert {r.headers["x-tiered-reason"] for r in replies if r.headers["x-tiered-tier"] == "edge"} == {"budget"}
        assert rt.metric("tiered_router_budget_exceeded_total", action="downgraded") == 4
        # Settled at the real cost (2 × COST + worst < 2.5 × worst): a third fits on big again, a fourth not.
        assert chat(rt.url).headers["x-tiered-tier"] == "big"
        assert chat(rt.url).headers.get("x-tiered-budget") == "downgraded"


def configmap(cluster: EmulatorProcess, name: str) -> dict[str, Any]:
    status, body = cluster.api("GET", f"/api/v1/namespaces/default/configmaps/{name}")
    return body.get("data") or {} if status == 200 else {}


def eventually(check: Any, what: str, seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def test_spend_survives_a_restart_in_the_configmap(
    fakes: dict[str, FakeUpstream], cluster: EmulatorProcess, tmp_path: Path
) -> None:
    name = "tiered-spend-restart"
    config = budget_config(fakes, [{"team": "acme", "dailyUSD": 2.5 * BIG_WORST, "onExceed": "reject"}],
                           store=store(cluster, name))
    with replica(config, tmp_path / "a", "router-0") as rt:
        assert [chat(rt.url).status_code for _ in range(2)] == [200, 200]
    # The router wrote its key on shutdown (and every sync): only its own key, its spend per window.
    stored = json.loads(configmap(cluster, name)["router-0"])["spend"]
    assert [k.split("|")[0] for k in stored] == ["team=acme"] and sum(stored.values()) == pytest.approx(2 * COST)
    with replica(config, tmp_path / "b", "router-0") as again:
        assert again.metric("tiered_router_budget_spend_usd", budget="team=acme") == pytest.approx(2 * COST)
        assert chat(again.url).status_code == 200  # 2 × COST + worst fits; 3 × COST + worst does not
        assert chat(again.url).status_code == 429


def test_two_routers_share_spend_within_a_sync_interval(
    fakes: dict[str, FakeUpstream], cluster: EmulatorProcess, tmp_path: Path
) -> None:
    name = "tiered-spend-shared"
    config = budget_config(fakes, [{"team": "acme", "dailyUSD": 2.5 * BIG_WORST, "onExceed": "reject"}],
                           store=store(cluster, name))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    gone = json.dumps({"spend": {"team=acme|monthly:2020-01": 9.0}, "updated": "2020-01-31T23:59:00Z"})
    idle = json.dumps({"spend": {}, "updated": now})  # a live replica that has spent nothing yet
    status, _ = cluster.api("POST", "/api/v1/namespaces/default/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
        "data": {"router-gone": gone, "router-idle": idle}})
    assert status == 201
    with replica(config, tmp_path / "a", "router-a") as a, replica(config, tmp_path / "b", "router-b") as b:
        assert [chat(a.url).status_code for _ in range(3)] == [200] * 3  # A spends 3 × COST of 2.5 worst cases
        # B learns A's spend from the ConfigMap within a sync interval (bounded poll) and then refuses.
        eventually(lambda: b.metric("tiered_router_budget_spend_usd", budget="team=acme") >= 3 * COST - 1e-9,
                   "router-b sees router-a's spend")
        assert chat(b.url).status_code == 429
        # One key each, never overwritten; a gone replica's stale key deleted, a live idle one kept.
        assert set(configmap(cluster, name)) == {"router-a", "router-b", "router-idle"}
        assert b.metric("tiered_router_spend_syncs_total", outcome="ok") >= 1
        assert b.metric("tiered_router_spend_syncs_total", outcome="error") == 0


def test_task_budgets_reject_or_alert_per_task_id(fakes: dict[str, FakeUpstream], tmp_path: Path) -> None:
    # Each call reserves 1 + 5 tokens and settles 60 (the fakes' usage): the second call of a task is over.
    config = {**base_config(fakes), "taskBudget": {"maxTokens": 60, "onExceed": "reject"}}
    extra = {"body": {"max_tokens": 5}}
    with router(config, tmp_path) as rt:
        first = chat(rt.url, headers={"x-tiered-task-id": "t-1"}, **dict(extra))
        second = chat(rt.url, headers={"x-tiered-task-id": "t-1"}, **dict(extra))
        assert (first.status_code, second.status_code) == (200, 429)
        assert "task is over its budget" in second.json()["error"]["message"]
        assert chat(rt.url, headers={"x-tiered-task-id": "t-2"}, **dict(extra)).status_code == 200
        assert chat(rt.url, **dict(extra)).status_code == 200  # no task id: no task budget
        assert rt.metric("tiered_router_task_budget_exceeded_total", action="rejected") == 1
        rt.apply({**config, "taskBudget": {"maxTokens": 60, "onExceed": "alert"}})
        alerted = [chat(rt.url, headers={"x-tiered-task-id": "t-1"}, **dict(extra)) for _ in range(2)]
        assert [(r.status_code, r.headers.get("x-tiered-budget")) for r in alerted] == [(200, "over-task-budget")] * 2
        assert rt.metric("tiered_router_task_budget_exceeded_total", action="alerted") == 2
        assert rt.log.read_text().count("task 't-1' is over its budget") == 1  # one log line per task
