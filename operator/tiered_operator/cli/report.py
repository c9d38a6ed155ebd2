"""`tiered report`: the router's cost numbers as a table, from a router's cost API or from Prometheus.

    tiered report --router http://router:8000 [--api-key KEY]          # totals since the router started
    tiered report --prometheus http://prometheus:9090 --window 24h     # any window, every router replica
    ... [--by tier|team|feature|tier,team,feature] [--json] [--plot burn.png]

Per row (tier, team, feature by default): requests, tokens, cost, baseline cost (what the policy's baseline
tier would have charged), savings, and share (of the cost). The router's metrics count tokens by tier only,
so from Prometheus the tokens column is filled when grouping by tier alone.

`--plot FILE.png` draws token burn and cost by tier over the window: from Prometheus range queries, or from
the router's `/v1/tiered/costs/history` when it has one. matplotlib is needed for it only (`pip install
matplotlib`; it comes with the dev extra), and its absence is a one-line error.

The parsing, grouping and table are pure functions over pydantic models; `report` does the HTTP and printing.
Must not: write anything anywhere but the plot file and stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from tiered_operator.cli import UsageError

GROUPS = ("tier", "team", "feature")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PLOT_POINTS = 120  # points per series in a plot: enough for a day at 12-minute resolution
MIN_STEP_SECONDS = 15.0  # below a few scrape intervals `increase` has too few samples per step


class Line(BaseModel):
    """One row of the report: totals for a (tier, team, feature), or for a grouping of them."""

    model_config = ConfigDict(frozen=True)

    tier: str = ""
    team: str = ""
    feature: str = ""
    requests: float = 0.0
    tokens: float | None = None
    """None when the source does not count tokens at this grouping (Prometheus: by tier only)."""
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0

    @property
    def savings_usd(self) -> float:
        return self.baseline_cost_usd - self.cost_usd


class Report(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str
    window_seconds: float | None = None
    """None for the router's cost API: its totals run from the router's start."""
    lines: tuple[Line, ...] = ()
    tier_tokens: Mapping[str, float] | None = None
    """Tokens by tier when `lines` carry none (Prometheus)."""


class Series(BaseModel):
    """Token burn and cost per step, by tier, for a plot."""

    model_config = ConfigDict(frozen=True)

    source: str
    step_seconds: float
    timestamps: tuple[float, ...]
    tokens: Mapping[str, tuple[float, ...]]
    cost_usd: Mapping[str, tuple[float, ...]]


# ---- pure ------------------------------------------------------------------------------------------------


def _secs(seconds: float) -> str:
    """Seconds as PromQL and URLs take them: never in exponent notation (which `:g` gives from 1e6 up)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def parse_window(text: str) -> float:
    """`90`, `90s`, `15m`, `24h`, `7d`, `1h30m` → seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+)([smhdw])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise UsageError(f"--window {text!r}: give seconds or a duration such as 15m, 24h, 7d")
        seconds = float(sum(int(n) * UNITS[u] for n, u in parts))
    if seconds <= 0:
        raise UsageError("--window must be positive")
    return seconds


def report_from_costs(body: Mapping[str, Any], source: str) -> Report:
    """The router's `/v1/tiered/costs` body → a report (totals since the router started)."""
    lines = tuple(
        Line(tier=row["tier"], team=row["team"], feature=row["feature"], requests=row["requests"],
             tokens=row["input_tokens"] + row["output_tokens"], cost_usd=row["cost_usd"],
             baseline_cost_usd=row["baseline_cost_usd"])
        for row in body.get("by_tier_team_feature", [])
    )
    return Report(source=source, lines=lines)


def prometheus_queries(window_seconds: float) -> dict[str, str]:
    """Instant queries for a window ending at the query time. Requests refused before routing (tier none)
    are left out, as the cost API leaves them out."""
    w = f"{_secs(window_seconds)}s"
    by = "sum by (tier, team, feature)"
    return {
        "requests": f'{by} (increase(tiered_router_requests_total{{tier!="none"}}[{w}]))',
        "cost_usd": f"{by} (increase(tiered_router_cost_usd_total[{w}]))",
        "baseline_cost_usd": f"{by} (increase(tiered_router_baseline_cost_usd_total[{w}]))",
        "tokens": f"sum by (tier) (increase(tiered_router_tokens_total[{w}]))",
    }


def _value(item: Mapping[str, Any]) -> float:
    value = float(item["value"][1])
    return 0.0 if math.isnan(value) else value


def report_from_prometheus(results: Mapping[str, Sequence[Mapping[str, Any]]], window_seconds: float,
                           source: str) -> Report:
    """Instant-vector results of `prometheus_queries` (by name) → a report."""
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for name in ("requests", "cost_usd", "baseline_cost_usd"):
        for item in results.get(name, ()):
            labels = item["metric"]
            key = (labels.get("tier", ""), labels.get("team", ""), labels.get("feature", ""))
            rows.setdefault(key, {})[name] = _value(item)
    tier_tokens = {item["metric"].get("tier", ""): _value(item) for item in results.get("tokens", ())}
    lines = tuple(
        Line(tier=tier, team=team, feature=feature, **values)
        for (tier, team, feature), values in sorted(rows.items())
        if any(values.values())  # a series that did not move in the window is not a row of it
    )
    return Report(source=source, window_seconds=window_seconds, lines=lines, tier_tokens=tier_tokens)


def grouped(report: Report, by: Sequence[str]) -> list[Line]:
    """Lines summed by the `by` labels (the others left blank), in label order."""
    sums: dict[tuple[str, ...], dict[str, Any]] = {}
    for line in report.lines:
        key = tuple(getattr(line, label) for label in by)
        total = sums.setdefault(key, {"requests": 0.0, "tokens": 0.0, "cost_usd": 0.0, "baseline_cost_usd": 0.0})
        total["requests"] += line.requests
        total["tokens"] = None if line.tokens is None or total["tokens"] is None else total["tokens"] + line.tokens
        total["cost_usd"] += line.cost_usd
        total["baseline_cost_usd"] += line.baseline_cost_usd
    lines = []
    for key, total in sorted(sums.items()):
        labels = dict(zip(by, key, strict=True))
        if total["tokens"] is None and tuple(by) == ("tier",) and report.tier_tokens is not None:
            total["tokens"] = report.tier_tokens.get(labels["tier"], 0.0)
        lines.append(Line(**labels, **total))
    return lines


def total(report: Report, lines: Iterable[Line]) -> Line:
    lines = list(lines)
    tokens: float | None = None
    if all(line.tokens is not None for line in lines):
        tokens = sum(line.tokens or 0.0 for line in lines)
    elif report.tier_tokens is not None:
        tokens = sum(report.tier_tokens.values())
    return Line(requests=sum(line.requests for line in lines), tokens=tokens,
                cost_usd=sum(line.cost_usd for line in lines),
                baseline_cost_usd=sum(line.baseline_cost_usd for line in lines))


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value - round(value)) < 1e-6 or abs(value) >= 1000 else f"{value:,.1f}"


def _usd(value: float) -> str:
    # Self-hosted tokens cost fractions of a cent: keep their digits visible.
    if abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.4f}" if abs(value) < 10 else f"${value:,.2f}"


def table(report: Report, by: Sequence[str]) -> str:
    """The report as an aligned text table with a total row and a heading that says what it covers."""
    lines = grouped(report, by)
    overall = total(report, lines)
    header = [*by, "requests", "tokens", "cost", "baseline", "savings", "share"]
    body = []
    for line in [*lines, overall]:
        share = "-" if overall.cost_usd <= 0 else f"{line.cost_usd / overall.cost_usd:.1%}"
        labels = [getattr(line, label) for label in by] if line is not overall else ["total", *[""] * (len(by) - 1)]
        body.append([*labels, _number(line.requests), _number(line.tokens), _usd(line.cost_usd),
                     _usd(line.baseline_cost_usd), _usd(line.savings_usd), share])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = len(by)

    def render(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i < numeric else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    covers = ("since the router started" if report.window_seconds is None
              else f"over the last {_duration(report.window_seconds)}")
    rule = "  ".join("-" * w for w in widths)
    text = [f"tiered cost report: {report.source}, {covers}", "", render(header), rule,
            *(render(row) for row in body[:-1]), rule, render(body[-1])]
    if report.tier_tokens is not None and any(line.tokens is None for line in lines):
        text.append("tokens: Prometheus counts them by tier only (use --by tier)")
    return "\n".join(text) + "\n"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{_secs(seconds / size)}{unit}"
    return f"{_secs(seconds)}s"


def as_json(report: Report, by: Sequence[str]) -> str:
    lines = grouped(report, by)
    rows = [{**line.model_dump(), "savings_usd": line.savings_usd} for line in [*lines, total(report, lines)]]
    return json.dumps({"source": report.source, "window_seconds": report.window_seconds, "by": list(by),
                       "rows": rows[:-1], "total": rows[-1]}, indent=2) + "\n"


def plot_step(window_seconds: float) -> float:
    return max(MIN_STEP_SECONDS, math.ceil(window_seconds / PLOT_POINTS))


def series_queries(step_seconds: float) -> dict[str, str]:
    """Range queries: what each step added, by tier."""
    s = f"{_secs(step_seconds)}s"
    return {
        "tokens": f"sum by (tier) (increase(tiered_router_tokens_total[{s}]))",
        "cost_usd": f"sum by (tier) (increase(tiered_router_cost_usd_total[{s}]))",
    }


def series_from_prometheus(results: Mapping[str, Sequence[Mapping[str, Any]]], start: float, end: float,
                           step: float, source: str) -> Series:
    """Matrix results of `series_queries` (by name) → per-tier series on one time axis (gaps are 0)."""
    stamps = tuple(start + i * step for i in range(round((end - start) / step) + 1))
    index = {round(t, 3): i for i, t in enumerate(stamps)}
    columns: dict[str, dict[str, list[float]]] = {}
    for name in ("tokens", "cost_usd"):
        by_tier = columns.setdefault(name, {})
        for item in results.get(name, ()):
            points = by_tier.setdefault(item["metric"].get("tier", ""), [0.0] * len(stamps))
            for stamp, value in item["values"]:
                at = index.get(round(float(stamp), 3))
                if at is not None and not math.isnan(float(value)):
                    points[at] = float(value)
    return Series(source=source, step_seconds=step, timestamps=stamps,
                  tokens={tier: tuple(v) for tier, v in sorted(columns["tokens"].items())},
                  cost_usd={tier: tuple(v) for tier, v in sorted(columns["cost_usd"].items())})


def series_from_router_history(body: Mapping[str, Any], source: str) -> Series:
    """The router's `/v1/tiered/costs/history` body → series."""
    tiers = body.get("tiers", {})
    return Series(
        source=source, step_seconds=float(body["step_seconds"]), timestamps=tuple(body["timestamps"]),
        tokens={tier: tuple(a + b for a, b in zip(v["input_tokens"], v["output_tokens"], strict=True))
                for tier, v in sorted(tiers.items())},
        cost_usd={tier: tuple(v["cost_usd"]) for tier, v in sorted(tiers.items())},
    )


# ---- edges -----------------------------------------------------------------------------------------------


def plot(series: Series, out: Path) -> None:
    try:
        import matplotlib
    except ImportError as error:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    when = [datetime.fromtimestamp(t, UTC) for t in series.timestamps]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for tier, values in series.tokens.items():
        top.plot(when, values, lw=1.5, label=tier)
    for tier, values in series.cost_usd.items():
        bottom.plot(when, values, lw=1.5, label=tier)
    step = _duration(series.step_seconds)
    top.set_ylabel(f"tokens per {step}")
    top.set_title(f"Token burn and cost by tier ({series.source})")
    bottom.set_ylabel(f"USD per {step}")
    bottom.set_xlabel("time (UTC)")
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


class _Prometheus:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            response = self.http.get(path, params=params)
        except httpx.HTTPError as error:
            raise UsageError(f"Prometheus at {self.url} unreachable: {error}") from error
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or body.get("status") != "success":
            raise UsageError(f"Prometheus refused {params['query']!r}: {body.get('error') or response.text[:200]}")
        return list(body["data"]["result"])


def _router_get(http: httpx.Client, path: str) -> httpx.Response:
    try:
        response = http.get(path)
    except httpx.HTTPError as error:
        raise UsageError(f"router at {http.base_url} unreachable: {error}") from error
    if response.status_code == 401:
        raise UsageError(f"router at {http.base_url} wants an API key (--api-key) that it accepts")
    return response


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--router", metavar="URL", help="a router's base URL (reads /v1/tiered/costs)")
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus that scrapes the routers")
    parser.add_argument("--api-key", help="the router's API key (a team's key sees its team; an admin key, all)")
    parser.add_argument("--window", default="24h",
                        help="the window ending now (e.g. 15m, 24h, 7d; default 24h) of a Prometheus report and "
                        "of the plot (a router's table covers the time since it started)")
    parser.add_argument("--by", default="tier,team,feature",
                        help="comma-separated grouping from tier, team, feature (default: all three)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw token burn and cost by tier")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")


def _by(text: str) -> tuple[str, ...]:
    by = tuple(part.strip() for part in text.split(",") if part.strip())
    wrong = [part for part in by if part not in GROUPS]
    if not by or wrong or len(set(by)) != len(by):
        raise UsageError(f"--by {text!r}: a comma-separated list from {', '.join(GROUPS)}")
    return by


def report(args: argparse.Namespace) -> int:
    by = _by(args.by)
    window = parse_window(args.window)
    now = time.time()
    series: Series | None = None
    if args.prometheus:
        prometheus = _Prometheus(args.prometheus, args.timeout)
        at = {"time": f"{now:.3f}"}
        results = {name: prometheus.get("/api/v1/query", {"query": q, **at})
                   for name, q in prometheus_queries(window).items()}
        result = report_from_prometheus(results, window, prometheus.url)
        if args.plot:
            step = plot_step(window)
            # The last step ends at or after now, so the newest samples are in it.
            start, end = math.floor((now - window) / step) * step, math.ceil(now / step) * step
            span = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": _secs(step)}
            matrices = {name: prometheus.get("/api/v1/query_range", {"query": q, **span})
                        for name, q in series_queries(step).items()}
            series = series_from_prometheus(matrices, start, end, step, prometheus.url)
    else:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.Client(base_url=args.router.rstrip("/"), headers=headers, timeout=args.timeout) as http:
            response = _router_get(http, "/v1/tiered/costs")
            if response.status_code != 200:
                raise UsageError(f"router refused /v1/tiered/costs: {response.status_code} {response.text[:200]}")
            result = report_from_costs(response.json(), args.router.rstrip("/"))
            if args.plot:
                history = _router_get(
                    http, f"/v1/tiered/costs/history?window={_secs(window)}&step={_secs(plot_step(window))}")
                if history.status_code == 404:
                    raise UsageError("this router keeps no cost history: plot from Prometheus (--prometheus URL)")
                if history.status_code != 200:
                    raise UsageError(f"router refused its cost history: {history.status_code} {history.text[:200]}")
                series = series_from_router_history(history.json(), args.router.rstrip("/"))
    print(as_json(result, by) if args.json else table(result, by), end="")
    if series is not None:
        plot(series, args.plot)
        moved = sorted(tier for tier, values in series.tokens.items() if any(values))
        print(f"plot written to {args.plot}: {len(series.timestamps)} steps of {_duration(series.step_seconds)}, "
              f"tiers with tokens: {', '.join(moved) or 'none'}")
    return 0
