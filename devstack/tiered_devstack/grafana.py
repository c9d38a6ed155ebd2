"""The Grafana dashboard of tiered's Prometheus metrics, built with Grafana's typed SDK (grafana-foundation-sdk).

`python -m tiered_devstack.grafana` (or `make dashboards`) writes `charts/tiered/dashboards/tiered.json`, which
the chart ships as a ConfigMap for Grafana's dashboard sidecar; a test fails when the committed file differs
from what `dashboard_json()` builds. Panels are data (`PANELS`), so tests can read every expression without
Grafana. This module owns the dashboard only: it never talks to Grafana or Prometheus, and the product never
imports it (the SDK is a dev dependency).

Metric names come from `tiered_router.metrics` and `tiered_operator.controller.metrics`; `$__rate_interval`,
`$__range` and the `$variables` below are Grafana's, substituted at query time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "tiered-cost"
OUTPUT = Path(__file__).resolve().parents[2] / "charts" / "tiered" / "dashboards" / "tiered.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Filters the template variables apply; every cost and request series carries team and feature.
ATTRIBUTION = 'tier=~"$tier", team=~"$team", feature=~"$feature"'
TIER = 'tier=~"$tier"'

Kind = Literal["timeseries", "stat", "table"]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    stack: StackingMode | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...] = field(default_factory=tuple)


def _t(expr: str, legend: str = "") -> Target:
    return Target(expr, legend)


def _cost(metric: str, by: str = "", window: str = "$__range") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (increase(tiered_router_{metric}_total{{{ATTRIBUTION}}}[{window}]))"


def _per_hour(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate(tiered_router_{metric}_total{{{ATTRIBUTION}}}[$__rate_interval])) * 3600"


def _ratio(part: str, whole: str) -> str:
    """part / whole where an absent part (nothing timed out yet) is 0, not a gap; both are `sum [by (...)]`."""
    return f"({part} or {whole} * 0) / {whole}"


def _quantile(q: float, metric: str, by: str = "le", matcher: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{matcher}}}[$__rate_interval])))"


# Break-even: self-hosting costs its GPUs whatever the traffic, the frontier API costs per token. The frontier
# price per token is what the baseline tier would have charged for the tokens served, over those tokens (the
# real input/output mix); a day of the GPUs ($gpus × $gpu_hour_usd × 24) buys that many frontier tokens.
FRONTIER_USD_PER_TOKEN = (
    "(sum(rate(tiered_router_baseline_cost_usd_total[1h])) / sum(rate(tiered_router_tokens_total[1h])))"
)
BREAK_EVEN_TOKENS_PER_DAY = f"($gpus * $gpu_hour_usd * 24) / {FRONTIER_USD_PER_TOKEN}"
SELF_HOSTED_TOKENS_PER_DAY = 'sum(rate(tiered_router_tokens_total{tier!~"$baseline"}[1h])) * 86400'
BREAK_EVEN_DESCRIPTION = (
    "Tokens per day at which self-hosting costs the same as sending them to the frontier API. Self-hosted "
    "tiers cost their GPUs whether busy or idle: `$gpus × $gpu_hour_usd × 24` USD a day (dashboard variables: "
    "the GPUs your self-hosted tiers hold and their hourly price). The frontier API costs per token: "
    "`sum(rate(tiered_router_baseline_cost_usd_total[1h])) / sum(rate(tiered_router_tokens_total[1h]))` is "
    "what the baseline tier would have charged per token for the last hour's traffic, at its real "
    "input/output mix. Break-even = daily GPU cost / frontier USD per token. Against it: the tokens the "
    "self-hosted tiers (every tier but `$baseline`) serve per day at the last hour's rate. Above the line, "
    "self-hosting pays; below it, the frontier API would be cheaper for this volume."
)

BURSTING = (
    '(sum(tiered_operator_burst_decisions_total{reason="BurstStarted"}) or vector(0))'
    ' - (sum(tiered_operator_burst_decisions_total{reason="BurstEnded"}) or vector(0))'
)

ROWS: tuple[RowSpec, ...] = (
    RowSpec("Cost and savings", (
        PanelSpec("Cost", "USD spent over the selected range (self-hosted tiers priced from their GPU-hour cost).",
                  (_t(_cost("cost_usd")),), unit="currencyUSD", kind="stat", width=6, height=4),
        PanelSpec("Baseline cost", "What the baseline tier would have charged for the same tokens.",
                  (_t(_cost("baseline_cost_usd")),), unit="currencyUSD", kind="stat", width=6, height=4),
        PanelSpec("Savings", "Baseline cost minus cost over the selected range.",
                  (_t(f"{_cost('baseline_cost_usd')} - {_cost('cost_usd')}"),), unit="currencyUSD", kind="stat",
                  width=6, height=4),
        PanelSpec("Savings rate", "Share of the baseline cost saved: 1 - cost / baseline cost.",
                  (_t(f"1 - {_cost('cost_usd')} / {_cost('baseline_cost_usd')}"),), unit="percentunit",
                  kind="stat", width=6, height=4),
        PanelSpec("Cost and baseline by tier", "USD per hour by tier, and what the baseline tier would have charged.",
                  (_t(_per_hour("cost_usd", "tier"), "{{tier}} cost"),
                   _t(_per_hour("baseline_cost_usd", "tier"), "{{tier}} baseline")), unit="currencyUSD"),
        PanelSpec("Savings by tier", "Baseline cost minus cost, USD per hour, by tier.",
                  (_t(f"{_per_hour('baseline_cost_usd', 'tier')} - {_per_hour('cost_usd', 'tier')}", "{{tier}}"),),
                  unit="currencyUSD"),
        PanelSpec("Cost by team", "USD per hour by team.", (_t(_per_hour("cost_usd", "team"), "{{team}}"),),
                  unit="currencyUSD", stack=StackingMode.NORMAL),
        PanelSpec("Cost by feature", "USD per hour by feature.",
                  (_t(_per_hour("cost_usd", "feature"), "{{feature}}"),), unit="currencyUSD",
                  stack=StackingMode.NORMAL),
        PanelSpec("Cost, baseline and savings by tier, team and feature",
                  "Totals over the selected range, one row per tier, team and feature.",
                  (_t(_cost("cost_usd", "tier, team, feature"), "cost"),
                   _t(_cost("baseline_cost_usd", "tier, team, feature"), "baseline"),
                   _t(f"{_cost('baseline_cost_usd', 'tier, team, feature')}"
                      f" - {_cost('cost_usd', 'tier, team, feature')}", "savings")),
                  unit="currencyUSD", kind="table", width=24),
    )),
    RowSpec("Resolved tasks", (
        PanelSpec("Cost per resolved task", "USD of every call of the tasks marked resolved (POST /v1/tiered/feedback) "
                  "over the selected range, per resolved task.",
                  (_t(f"{_cost('resolved_cost_usd')} / "
                      f'sum (increase(tiered_router_feedback_total{{{ATTRIBUTION}, outcome="resolved"}}[$__range]))'),),
                  unit="currencyUSD", kind="stat", width=6),
        PanelSpec("Cost per resolved task by feature", "USD per resolved task, by feature.",
                  (_t(f"{_per_hour('resolved_cost_usd', 'feature')} / "
                      f'(sum by (feature) (rate(tiered_router_feedback_total{{{ATTRIBUTION}, outcome="resolved"}}'
                      "[$__rate_interval])) * 3600)", "{{feature}}"),), unit="currencyUSD", width=9),
        PanelSpec("Resolution rate by tier", "Tasks judged resolved over all tasks judged, by the tier that answered.",
                  (_t(_ratio(f'sum by (tier) (rate(tiered_router_feedback_total{{{ATTRIBUTION}, outcome="resolved"}}'
                             "[$__rate_interval]))",
                             f"sum by (tier) (rate(tiered_router_feedback_total{{{ATTRIBUTION}}}[$__rate_interval]))"),
                      "{{tier}}"),), unit="percentunit", width=9),
    )),
    RowSpec("Tokens and traffic", (
        PanelSpec("Token burn by tier", "Tokens per second served, by tier and direction (input, output).",
                  (_t(f"sum by (tier, direction) (rate(tiered_router_tokens_total{{{TIER}}}[$__rate_interval]))",
                      "{{tier}} {{direction}}"),), stack=StackingMode.NORMAL),
        PanelSpec("Tier mix", "Share of answered requests by tier (requests refused before routing left out).",
                  (_t(f'sum by (tier) (rate(tiered_router_requests_total{{{ATTRIBUTION}, tier!="none"}}'
                      "[$__rate_interval]))", "{{tier}}"),), stack=StackingMode.PERCENT),
        PanelSpec("Requests by status", "Requests per second by HTTP status.",
                  (_t(f"sum by (status) (rate(tiered_router_requests_total{{{ATTRIBUTION}}}[$__rate_interval]))",
                      "{{status}}"),), unit="reqps"),
        PanelSpec("Error rate", "Share of requests answered with a 4xx or 5xx, and failed upstream attempts "
                  "per second by tier and cause (each may have been retried or fallen back).",
                  (_t(_ratio(f'sum(rate(tiered_router_requests_total{{{ATTRIBUTION}, status=~"[45].."}}'
                             "[$__rate_interval]))",
                             f"sum(rate(tiered_router_requests_total{{{ATTRIBUTION}}}[$__rate_interval]))"), "errors"),
                   _t(f"sum by (tier, cause) (rate(tiered_router_upstream_errors_total{{{TIER}}}[$__rate_interval]))",
                      "upstream {{tier}} {{cause}}")), unit="percentunit"),
        PanelSpec("Escalation rate", "Answers of the escalation `from` tier sent on to the `to` tier, over all its "
                  "checked answers.",
                  (_t(_ratio('sum by (from, to) (rate(tiered_router_escalations_total{outcome="escalated"}'
                             "[$__rate_interval]))",
                             "sum by (from, to) (rate(tiered_router_escalations_total[$__rate_interval]))"),
                      "{{from}} → {{to}}"),), unit="percentunit"),
        PanelSpec("Cache hit rate", "Hits over lookups (hit, miss, guarded: a semantic candidate refused) by cache "
                  "kind (exact, semantic), and USD per hour the hits saved by kind.",
                  (_t(_ratio('sum by (kind) (rate(tiered_router_cache_total{outcome="hit"}[$__rate_interval]))',
                             'sum by (kind) (rate(tiered_router_cache_total{outcome=~"hit|miss|guarded"}'
                             "[$__rate_interval]))"), "{{kind}}"),
                   _t(_per_hour("cache_saved_usd", "kind"), "{{kind}} saved USD/h")),
                  unit="percentunit"),
        PanelSpec("Encoder timeouts", "Embeddings for classifier and similarTo rules by outcome; a timeout or an "
                  "error skips those rules for the request.",
                  (_t("sum by (outcome) (rate(tiered_router_route_signals_total[$__rate_interval]))", "{{outcome}}"),
                   _t(_ratio('sum(rate(tiered_router_route_signals_total{outcome=~"timeout|error"}'
                             "[$__rate_interval]))",
                             "sum(rate(tiered_router_route_signals_total[$__rate_interval]))"), "skipped share")),
                  unit="short"),
        PanelSpec("Burst periods", "Policies in burst (the operator's BurstStarted minus BurstEnded flips since its "
                  "leader started), and requests per second the routers sent to a burst target.",
                  (_t(BURSTING, "policies bursting"),
                   _t(f'sum by (tier) (rate(tiered_router_requests_total{{{TIER}, reason="burst"}}'
                      "[$__rate_interval]))", "overflow to {{tier}}"),
                   _t("sum by (reason) (increase(tiered_operator_burst_decisions_total[$__rate_interval]))",
                      "{{reason}}")), unit="short"),
    )),
    RowSpec("Latency", (
        PanelSpec("Router overhead", "Router time per request, excluding the wait on the upstream.",
                  tuple(_t(_quantile(q, "tiered_router_overhead_seconds"), f"p{round(q * 100)}")
                        for q in (0.5, 0.95, 0.99)), unit="s"),
        PanelSpec("Upstream latency by tier", "Upstream time from send to last byte, by tier.",
                  tuple(_t(_quantile(q, "tiered_router_upstream_seconds", "le, tier", TIER),
                           f"{{{{tier}}}} p{round(q * 100)}") for q in (0.5, 0.95)), unit="s"),
    )),
    RowSpec("Self-hosting break-even", (
        PanelSpec("Break-even volume vs self-hosted volume", BREAK_EVEN_DESCRIPTION,
                  (_t(BREAK_EVEN_TOKENS_PER_DAY, "break-even tokens/day"),
                   _t(SELF_HOSTED_TOKENS_PER_DAY, "self-hosted tokens/day")), width=16),
        PanelSpec("Frontier USD per million tokens", "What the baseline tier charges per million tokens at the last "
                  "hour's input/output mix (the break-even's denominator).",
                  (_t(f"{FRONTIER_USD_PER_TOKEN} * 1e6"),), unit="currencyUSD", kind="stat", width=8),
    )),
)


def _variables() -> list[gdash.DatasourceVariable | gdash.QueryVariable | gdash.TextBoxVariable]:
    def labels(name: str, label: str, query: str) -> gdash.QueryVariable:
        return (gdash.QueryVariable(name).label(label).datasource(DATASOURCE)
                .query({"query": query, "refId": name}).multi(True).include_all(True).all_value(".*")
                .current(VariableOption(selected=True, text="All", value="$__all"))
                .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))

    return [
        gdash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        labels("tier", "Tier", "label_values(tiered_router_tokens_total, tier)"),
        labels("team", "Team", "label_values(tiered_router_cost_usd_total, team)"),
        labels("feature", "Feature", "label_values(tiered_router_cost_usd_total, feature)"),
        gdash.TextBoxVariable("baseline").label("Baseline (frontier) tier").default_value("frontier")
        .description("The policy's baseline tier: the break-even counts every other tier as self-hosted."),
        gdash.TextBoxVariable("gpus").label("Self-hosted GPUs").default_value("1")
        .description("GPUs held by the self-hosted tiers (replicas × GPUs per replica)."),
        gdash.TextBoxVariable("gpu_hour_usd").label("USD per GPU-hour").default_value("3.50")
        .description("The tiers' pricing.gpuHourUSD."),
    ]


def _panel(spec: PanelSpec, panel_id: int) -> gts.Panel | gstat.Panel | gtable.Panel:
    panel: gts.Panel | gstat.Panel | gtable.Panel
    if spec.kind == "stat":
        panel = gstat.Panel()
    elif spec.kind == "table":
        panel = gtable.Panel().with_transformation(DataTransformerConfig(id_val="merge", options={}))
    else:
        series = gts.Panel()
        if spec.stack is not None:
            series = series.stacking(StackingConfig().mode(spec.stack)).fill_opacity(30)
        panel = series
    panel = (panel.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE).unit(spec.unit)
             .span(spec.width).height(spec.height))
    for index, target in enumerate(spec.targets):
        query = gprom.Dataquery().expr(target.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if target.legend:
            query = query.legend_format(target.legend)
        if spec.kind == "table":
            query = query.instant().format(PromQueryFormat.TABLE)
        else:  # a stat's number is its expression now: one point, not a series to reduce
            query = query.instant() if spec.kind == "stat" else query.range()
        panel = panel.with_target(query)
    return panel


def build() -> gdash.Dashboard:
    board = (
        gdash.Dashboard("tiered: cost, traffic and latency").uid(UID).tags(["tiered", "llm", "cost"])
        .description("Token burn, cost and savings against the baseline tier, tier mix, escalations, cache, "
                     "bursts, latency and the break-even of self-hosting (tiered router and operator metrics).")
        .refresh("30s").time("now-6h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for variable in _variables():
        board = board.with_variable(variable)
    ids = iter(range(1, 1000))
    for row in ROWS:
        board = board.with_row(gdash.Row(row.title).id(next(ids)))
        for spec in row.panels:
            board = board.with_panel(_panel(spec, next(ids)))
    return board


def dashboard_json() -> str:
    """The dashboard as the chart ships it: sorted keys, two-space indent, a final newline."""
    return json.dumps(build().build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def expressions(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard's JSON."""
    found = []
    for panel in dashboard.get("panels", []):  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    output = Path(args[0]) if args else OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dashboard_json())
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
