"""`tiered report`'s pure parts: windows, grouping, the table, series, and the plot's optional matplotlib.
Against a real router and a real Prometheus: tests/integration/test_cost_views.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiered_operator.cli import UsageError, main
from tiered_operator.cli.report import (
    Line,
    Report,
    Series,
    grouped,
    parse_window,
    plot,
    report_from_costs,
    report_from_prometheus,
    series_from_prometheus,
    table,
)

COSTS = {
    "baseline_tier": "big",
    "by_tier_team_feature": [
        {"tier": "small", "team": "alpha", "feature": "chat", "requests": 3, "input_tokens": 30,
         "output_tokens": 10, "cost_usd": 0.001, "baseline_cost_usd": 0.01},
        {"tier": "big", "team": "alpha", "feature": "chat", "requests": 1, "input_tokens": 10,
         "output_tokens": 10, "cost_usd": 0.003, "baseline_cost_usd": 0.003},
        {"tier": "small", "team": "beta", "feature": "search", "requests": 2, "input_tokens": 20,
         "output_tokens": 0, "cost_usd": 0.0, "baseline_cost_usd": 0.002},
    ],
}


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400),
                                               ("7d", 604800), ("1h30m", 5400)])
def test_windows(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1x", "0", "h1", "1h 30m"])
def test_bad_windows_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_window(text)


def test_grouping_sums_and_the_table_has_a_total_and_shares() -> None:
    report = report_from_costs(COSTS, "http://router")
    by_team = grouped(report, ["team"])
    assert [(line.team, line.requests, line.tokens) for line in by_team] == [("alpha", 4, 60), ("beta", 2, 20)]
    assert by_team[0].savings_usd == pytest.approx(0.009)
    text = table(report, ["team"])
    assert "since the router started" in text
    alpha = next(row for row in text.splitlines() if row.startswith("alpha"))
    assert alpha.split()[-1] == "100.0%" and "$0.0090" in alpha  # all the cost, its savings
    assert text.splitlines()[-1].split()[:3] == ["total", "6", "80"]


def test_prometheus_counts_tokens_by_tier_only() -> None:
    results = {
        "requests": [{"metric": {"tier": "small", "team": "a", "feature": "f"}, "value": [0, "2"]},
                     {"metric": {"tier": "big", "team": "a", "feature": "f"}, "value": [0, "0"]}],
        "cost_usd": [{"metric": {"tier": "small", "team": "a", "feature": "f"}, "value": [0, "0.5"]},
                     {"metric": {"tier": "big", "team": "a", "feature": "f"}, "value": [0, "NaN"]}],
        "tokens": [{"metric": {"tier": "small"}, "value": [0, "100"]}],
    }
    report = report_from_prometheus(results, 3600, "http://prometheus")
    assert [line.tier for line in report.lines] == ["small"]  # big did not move in the window
    assert grouped(report, ["tier"])[0].tokens == 100
    assert grouped(report, ["tier", "team"])[0].tokens is None
    text = table(report, ["tier", "team"])
    assert "over the last 1h" in text and "by tier only" in text


def test_series_align_on_the_steps_and_fill_gaps() -> None:
    results = {"tokens": [{"metric": {"tier": "small"}, "values": [[100, "5"], [130, "7"]]}],
               "cost_usd": [{"metric": {"tier": "small"}, "values": [[115, "NaN"]]}]}
    series = series_from_prometheus(results, 100, 130, 15, "p")
    assert series.timestamps == (100, 115, 130)
    assert series.tokens == {"small": (5.0, 0.0, 7.0)} and series.cost_usd == {"small": (0.0, 0.0, 0.0)}


def test_plot_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is absent
    series = Series(source="p", step_seconds=15, timestamps=(0.0,), tokens={}, cost_usd={})
    with pytest.raises(UsageError, match="pip install matplotlib"):
        plot(series, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_by_must_name_known_labels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--router", "http://127.0.0.1:1", "--by", "tier,user"]) == 2
    assert "--by 'tier,user'" in capsys.readouterr().err


def test_empty_report_prints_a_total_of_zero() -> None:
    text = table(Report(source="r", lines=(Line(tier="t", team="a", feature="f"),)), ["tier"])
    assert text.splitlines()[-1].split()[0] == "total" and text.splitlines()[-1].split()[-1] == "-"


def test_long_windows_stay_valid_promql() -> None:
    from tiered_operator.cli.report import prometheus_queries, series_queries

    assert "[2592000s]" in prometheus_queries(parse_window("30d"))["cost_usd"]
    assert "[21600s]" in series_queries(21600)["tokens"]
