"""`make demo` end to end: the stack comes up, real models answer through the router, small bursts to the
frontier stand-in and back, the cost report's numbers add up, and every process is stopped.

Costs ~90-120 s (its own Ray, two model loads, 45 requests). The arithmetic is checked, not a saving.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tiered_devstack.cluster import REPO_ROOT

pytestmark = pytest.mark.integration

FIELDS = ("requests", "input_tokens", "output_tokens", "cost_usd", "baseline_cost_usd")


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_demo_runs_end_to_end_and_its_report_adds_up(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "tiered_devstack.demo", "--report", str(report_file)],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-5000:]
    assert "Traceback" not in result.stderr
    assert "inferencetier.tiered.dev/small created" in out
    assert "NotRunnableHere" in out  # the vLLM example is marked, not pretended
    assert "BurstStarted" in out and "BurstEnded" in out
    assert "router reloaded: burst ON" in out and "router reloaded: burst off" in out
    assert "frontier-stand-in" in out and "not frontier" in out  # labelled for what it is
    assert out.rstrip().endswith("Stopping everything\x1b[0m")

    report = json.loads(report_file.read_text())
    rows, totals = report["rows"], report["totals"]
    assert report["answered"] == report["sent"] == totals["requests"] > 0
    for field in FIELDS:
        assert close(sum(row[field] for row in rows), totals[field]), field
        for grouping in ("by_tier", "by_team", "by_feature"):
            assert close(sum(line[field] for line in report[grouping].values()), totals[field]), (grouping, field)
    assert close(report["savings_usd"], totals["baseline_cost_usd"] - totals["cost_usd"])
    # On the baseline tier, cost and baseline cost are the same prices.
    frontier = report["by_tier"]["frontier-stand-in"]
    assert close(frontier["cost_usd"], frontier["baseline_cost_usd"])
    assert set(report["by_tier"]) == {"small", "frontier-stand-in"}
    assert report["burst_overflow"] > 0 and report["private_on_frontier"] == 0
    [period] = report["burst_periods"]
    assert 0 < period["start_s"] < period["end_s"]
    # The printed totals are the report's.
    assert f"savings ${report['savings_usd']:.6f}" in out
    assert f"requests {totals['requests']} (sent {report['sent']}" in out
