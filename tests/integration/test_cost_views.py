"""The cost views against real processes: every Grafana panel's PromQL and `tiered report`.

A real router (on fake upstreams) serves a bounded workload that touches every series the dashboard reads
(tiers, teams, features, feedback, an escalation, a burst overflow, an upstream failure, a refused request, a stream,
the encoder); the operator's metrics come from its own `OperatorMetrics` registry, driven by the test and
served by prometheus_client on loopback (running the whole operator would add the API emulator and a
policy's burst window for two counters). A real Prometheus scrapes both. The dashboard's expressions are
read from the chart's rendered ConfigMap (`helm template`), so what ships is what is checked.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import start_http_server
from router_bed import FakeUpstream, Router, base_config, router
from tiered_devstack.grafana import expressions
from tiered_devstack.prometheus import Prometheus, free_port, poll
from tiered_operator.cli import main
from tiered_operator.controller.metrics import OperatorMetrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".bin" / "helm"
LOW, HIGH = math.log(0.1), math.log(0.95)
# What Grafana would put in for the dashboard's variables: every tier, team and feature; the test's baseline.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__range": "10m", "tier": ".*", "team": ".*", "feature": ".*",
                     "baseline": "big", "gpus": "1", "gpu_hour_usd": "3.50"}
# Series this test bed cannot make: the response cache is another change's (its metrics may not exist yet).
NOT_PRODUCED = {"tiered_router_cache_total", "tiered_router_cache_saved_usd_total"}


@dataclass
class Bed:
    router: Router
    prometheus: Prometheus
    fakes: dict[str, FakeUpstream]


def config(up: dict[str, FakeUpstream]) -> dict[str, Any]:
    cfg = base_config(up, escalation={"from": "small", "to": "big", "minConfidence": 0.7},
                      encoder={"timeoutMs": 2000})
    small = cfg["tiers"][0]
    small.update({"concurrency": 1, "burst": True, "burstTarget": "big"})
    cfg["rules"].append({"name": "faq", "match": {"similarTo": {"examples": ["How do I reset my password?"],
                                                                "threshold": 0.9}}, "tier": "edge"})
    return cfg


def ask(rt: Router, team: str, feature: str, text: str = "hello", **headers: str) -> httpx.Response:
    return rt.http.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": text}]},
                        headers={"x-tiered-team": team, "x-tiered-feature": feature, **headers})


def workload(rt: Router, up: dict[str, FakeUpstream]) -> None:
    up["small"].control.post("/_fake/logprobs", json={"logprob": HIGH}).raise_for_status()
    for team, feature in [("alpha", "chat"), ("alpha", "search"), ("beta", "chat")]:
        assert ask(rt, team, feature).status_code == 200  # small, kept
        assert ask(rt, team, feature, "extract it", **{"x-tiered-task": "extraction"}).status_code == 200  # edge
        assert ask(rt, team, feature, "Prove the Theorem").status_code == 200  # big
    for reply, outcome in [(ask(rt, "alpha", "chat"), "resolved"), (ask(rt, "beta", "search"), "unresolved")]:
        judged = rt.http.post("/v1/tiered/feedback", json={"request_id": reply.headers["x-tiered-request-id"],
                                                           "outcome": outcome})
        assert judged.status_code == 200, judged.text
    up["small"].control.post("/_fake/logprobs", json={"logprob": LOW}).raise_for_status()
    assert ask(rt, "beta", "search").headers["x-tiered-escalated"] == "1"  # small → big
    up["small"].mode("fail", times=1)
    assert ask(rt, "beta", "search").status_code == 200  # a failed attempt, then a retry
    bad = rt.http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code >= 400  # refused before routing: tier none
    # Burst: small holds a stream (its one slot taken), so the next request overflows to big.
    up["small"].mode("hold", times=1)
    body = {"model": "auto", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hello"}]}
    with rt.http.stream("POST", "/v1/chat/completions", json=body, headers={"x-tiered-team": "alpha"}) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        overflow = ask(rt, "alpha", "chat")
        assert overflow.headers["x-tiered-reason"] == "burst" and overflow.headers["x-tiered-tier"] == "big"
        up["small"].release()
        assert any(line == "data: [DONE]" for line in lines)


def serve_operator_metrics(metrics: OperatorMetrics) -> tuple[Any, Any, str]:
    """The operator's own metrics registry, served on loopback as its `--metrics-port` serves it."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return server, thread, f"127.0.0.1:{port}"


def scraped(prometheus: Prometheus, rt: Router) -> None:
    """Wait until Prometheus holds the router's current request count."""
    served = rt.metric("tiered_router_requests_total")
    poll(lambda: True if _scalar(prometheus, "sum(tiered_router_requests_total)") == served else None,
         timeout=30, what=f"Prometheus seeing all {served} requests")


@pytest.fixture(scope="module")
def bed(router_fakes: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("cost-views")
    metrics = OperatorMetrics()
    metrics.leader.set(1)
    server, thread, operator_address = serve_operator_metrics(metrics)
    try:
        with router(config(router_fakes), tmp) as rt:
            jobs = {"router": [rt.url.removeprefix("http://")], "operator": [operator_address]}
            with Prometheus(tmp, [], jobs=jobs) as prometheus:
                # Twice, with a scrape between: the first pass creates the series, the second moves them, so
                # every rate and increase over the window has something to show (a series' first value is
                # not an increase to Prometheus).
                metrics.burst_decisions.labels("BurstStarted").inc()
                metrics.burst_decisions.labels("BurstEnded").inc()
                metrics.scale_decisions.labels("ScaledUp").inc()
                workload(rt, router_fakes)
                scraped(prometheus, rt)
                metrics.burst_decisions.labels("BurstStarted").inc()  # one policy in burst now
                metrics.scale_decisions.labels("ScaledUp").inc()
                workload(rt, router_fakes)
                scraped(prometheus, rt)
                poll(lambda: True if _scalar(prometheus, 'tiered_operator_burst_decisions_total{reason="BurstStarted"}')
                     == 2 else None, timeout=30, what="Prometheus holding the operator's series")
                yield Bed(rt, prometheus, router_fakes)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def query(prometheus: Prometheus, path: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus.url}{path}", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{params['query']}: {body}"
    return list(body["data"]["result"])


def instant(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    return query(prometheus, "/api/v1/query", query=expr)


def _scalar(prometheus: Prometheus, expr: str) -> float | None:
    result = instant(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def substitute(expr: str) -> str:
    """Grafana's variable interpolation for this bed (`$name` and `${name}`)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def shipped_expressions() -> list[tuple[str, str]]:
    assert HELM.exists(), f"{HELM} is missing: run `make setup`"
    result = subprocess.run([str(HELM), "template", "tiered", str(ROOT / "charts" / "tiered"),
                             "--set", "grafana.dashboards.enabled=true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [configmap] = [d for d in yaml.safe_load_all(result.stdout)
                   if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards")]
    return expressions(json.loads(configmap["data"]["tiered.json"]))


SHIPPED = shipped_expressions()


def metric_names(expr: str) -> set[str]:
    return {re.sub(r"_bucket$", "", name) for name in re.findall(r"\btiered_[a-z_]+", expr)}


def present_names(prometheus: Prometheus) -> set[str]:
    response = httpx.get(f"{prometheus.url}/api/v1/label/__name__/values", timeout=10).json()
    return {re.sub(r"_bucket$", "", name) for name in response["data"]}


def test_every_metric_the_dashboard_reads_is_produced_here_but_the_cache_ones(bed: Bed) -> None:
    wanted = set().union(*(metric_names(expr) for _, expr in SHIPPED))
    missing = wanted - present_names(bed.prometheus)
    assert missing <= NOT_PRODUCED, f"no series for {sorted(missing - NOT_PRODUCED)}"


@pytest.mark.parametrize(("title", "expr"), SHIPPED, ids=[f"{t}-{i}" for i, (t, _) in enumerate(SHIPPED)])
def test_panel_promql_evaluates_instant_and_range_with_data(bed: Bed, title: str, expr: str) -> None:
    promql = substitute(expr)
    produced = metric_names(expr) <= present_names(bed.prometheus)
    result = instant(bed.prometheus, promql)
    end = httpx.get(f"{bed.prometheus.url}/api/v1/query", params={"query": "time()"}, timeout=10).json()
    t = float(end["data"]["result"][0])
    matrix = query(bed.prometheus, "/api/v1/query_range", query=promql, start=f"{t - 120:.3f}", end=f"{t:.3f}",
                   step="5")
    if produced:
        assert result, f"{title}: no data for {promql}"
        assert matrix and any(series["values"] for series in matrix), f"{title}: no range data for {promql}"


def test_the_numbers_behind_the_panels_are_the_workload(bed: Bed) -> None:
    """Spot checks that the expressions mean what their titles say."""
    p = bed.prometheus
    tiers = {item["metric"]["tier"] for item in instant(p, substitute(
        'sum by (tier) (increase(tiered_router_cost_usd_total{tier=~"$tier"}[$__range]))'))}
    assert tiers == {"small", "edge", "big"}
    escalation = next(e for t, e in SHIPPED if t == "Escalation rate")
    [rate] = instant(p, substitute(escalation))
    assert 0 < float(rate["value"][1]) < 1  # one escalated of several checked small answers
    overflow = next(e for t, e in SHIPPED if t == "Burst periods" and "burst" in e and "operator" not in e)
    assert {i["metric"]["tier"] for i in instant(p, substitute(overflow))} == {"big"}
    per_task = next(e for t, e in SHIPPED if t == "Cost per resolved task")
    assert float(instant(p, substitute(per_task))[0]["value"][1]) > 0
    [resolution] = instant(p, substitute(next(e for t, e in SHIPPED if t == "Resolution rate by tier")))
    assert resolution["metric"]["tier"] == "small" and float(resolution["value"][1]) == pytest.approx(0.5)
    bursting = next(e for t, e in SHIPPED if t == "Burst periods" and "BurstStarted" in e)
    assert float(instant(p, substitute(bursting))[0]["value"][1]) == 1


# ---- tiered report ---------------------------------------------------------------------------------------


def run_report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_from_the_router_matches_its_cost_api(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    costs = bed.router.http.get("/v1/tiered/costs").json()
    code, out, _ = run_report(capsys, "--router", bed.router.url, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["total"]["cost_usd"] == pytest.approx(costs["totals"]["cost_usd"])
    assert report["total"]["baseline_cost_usd"] == pytest.approx(costs["totals"]["baseline_cost_usd"])
    assert report["total"]["requests"] == costs["totals"]["requests"]
    rows = {(r["tier"], r["team"], r["feature"]) for r in report["rows"]}
    assert rows == {(r["tier"], r["team"], r["feature"]) for r in costs["by_tier_team_feature"]}
    code, out, _ = run_report(capsys, "--router", bed.router.url, "--by", "team")
    assert code == 0
    assert "alpha" in out and "beta" in out and "total" in out and "since the router started" in out
    assert "100.0%" in out.splitlines()[-1]


def test_report_from_prometheus_over_a_window(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    costs = bed.router.http.get("/v1/tiered/costs").json()
    code, out, _ = run_report(capsys, "--prometheus", bed.prometheus.url, "--window", "15m", "--by", "tier", "--json")
    assert code == 0
    report = json.loads(out)
    by_tier = {row["tier"]: row for row in report["rows"]}
    assert set(by_tier) == {"small", "edge", "big"}
    # `increase` misses what a brand-new series held at its first scrape and extrapolates: close, not equal.
    assert 0 < report["total"]["cost_usd"] <= costs["totals"]["cost_usd"] * 1.5
    assert all(row["tokens"] and row["tokens"] > 0 for row in by_tier.values())
    code, out, _ = run_report(capsys, "--prometheus", bed.prometheus.url, "--window", "15m")
    assert code == 0 and "over the last 15m" in out and "by tier only" in out


def test_report_plots_token_burn_and_cost_from_prometheus(bed: Bed, capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    png = tmp_path / "burn.png"
    code, out, _ = run_report(capsys, "--prometheus", bed.prometheus.url, "--window", "10m", "--plot", str(png))
    assert code == 0 and f"plot written to {png}" in out
    assert "tiers with tokens: big, edge, small" in out  # the lines are drawn from data, not an empty frame
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_plots_from_the_router_history_or_says_it_has_none(
        bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "router.png"
    code, out, err = run_report(capsys, "--router", bed.router.url, "--window", "10m", "--plot", str(png))
    if bed.router.http.get("/v1/tiered/costs/history").status_code == 404:
        assert code == 2 and "keeps no cost history" in err and not png.exists()
    else:
        assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "tiers with tokens: big, edge, small" in out


def test_report_errors_are_one_line(bed: Bed, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_report(capsys, "--prometheus", bed.prometheus.url, "--window", "soon")
    assert code == 2 and "--window 'soon'" in err
    code, _, err = run_report(capsys, "--router", "http://127.0.0.1:1", "--timeout", "2")
    assert code == 2 and "unreachable" in err and "Traceback" not in err
