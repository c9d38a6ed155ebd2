"""The Grafana dashboard the chart ships: the committed JSON is what the SDK builder makes, and the ConfigMap
that carries it renders, validates strictly and holds that JSON. Its PromQL is checked against a real
Prometheus in tests/integration/test_cost_views.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tiered_devstack import grafana

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tiered"
HELM = ROOT / ".bin" / "helm"
COMMITTED = CHART / "dashboards" / "tiered.json"
KUBERNETES_VERSIONS = ["1.30", "1.31", "1.32", "1.33"]


def dashboard_configmaps(*args: str) -> list[dict[str, Any]]:
    assert HELM.exists(), f"{HELM} is missing: run `make setup`"
    result = subprocess.run([str(HELM), "template", "tiered", str(CHART), "--namespace", "tiered-system", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout)
            if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboards")]


def test_committed_dashboard_is_what_the_builder_makes() -> None:
    assert COMMITTED.read_text() == grafana.dashboard_json(), (
        "charts/tiered/dashboards/tiered.json is stale: run `make dashboards`")


def test_dashboard_is_off_by_default() -> None:
    assert dashboard_configmaps() == []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_configmap_passes_kubernetes_validate_strict(version: str) -> None:
    [configmap] = dashboard_configmaps("--set", "grafana.dashboards.enabled=true")
    kubernetes_validate.validate(configmap, version, strict=True)


def test_configmap_carries_the_committed_dashboard_with_the_sidecar_label() -> None:
    [configmap] = dashboard_configmaps("-f", str(CHART / "ci" / "dashboards-values.yaml"))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "tiered"}
    assert json.loads(configmap["data"]["tiered.json"]) == json.loads(COMMITTED.read_text())


def test_sidecar_label_is_configurable() -> None:
    [configmap] = dashboard_configmaps("--set", "grafana.dashboards.enabled=true",
                                       "--set", "grafana.dashboards.labels.grafana_dashboard=tiered")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "tiered"


def test_every_panel_is_described_queries_prometheus_and_has_a_unique_id() -> None:
    board = json.loads(COMMITTED.read_text())
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and 0 not in ids
    for panel in (p for p in panels if p["type"] != "row"):
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"tiered_(router|operator)_\w+", target["expr"]), target["expr"]
    variables = {v["name"] for v in board["templating"]["list"]}
    used = {name for _, expr in grafana.expressions(board) for name in re.findall(r"\$(\w+)", expr)}
    assert used - {"__rate_interval", "__range"} <= variables


def test_the_asked_for_views_are_there() -> None:
    exprs = " ".join(expr for _, expr in grafana.expressions(json.loads(COMMITTED.read_text())))
    for metric in ("tiered_router_tokens_total", "tiered_router_cost_usd_total",
                   "tiered_router_baseline_cost_usd_total", "tiered_router_escalations_total",
                   "tiered_router_cache_total", "tiered_router_cache_saved_usd_total",
                   "tiered_operator_burst_decisions_total", "tiered_router_route_signals_total",
                   "tiered_router_overhead_seconds_bucket", "tiered_router_upstream_seconds_bucket",
                   "tiered_router_upstream_errors_total", "tiered_router_resolved_cost_usd_total",
                   "tiered_router_feedback_total"):
        assert metric in exprs, metric
    break_even = next(p for p in json.loads(COMMITTED.read_text())["panels"] if p["title"].startswith("Break-even"))
    assert "$gpu_hour_usd" in break_even["description"] and "baseline" in break_even["description"]
