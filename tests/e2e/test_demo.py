"""`make demo` end to end: the whole local control plane comes up, scales, bursts, comes back and stops."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tiered_devstack.cluster import REPO_ROOT

pytestmark = pytest.mark.integration


def test_demo_runs_through_scale_and_burst_and_stops_cleanly() -> None:
    result = subprocess.run([sys.executable, "-m", "tiered_devstack.demo"], capture_output=True, text=True,
                            timeout=400, cwd=REPO_ROOT)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "inferencetier.tiered.dev/triage created" in out
    assert "RayServiceCreated" in out and "ScaledUp" in out and "ScaledDown" in out
    assert "BurstStarted" in out and "BurstEnded" in out
    assert "burst ON" in out and "(time's up" not in out
    assert out.rstrip().endswith("Stopping everything\x1b[0m")
    assert "Traceback" not in result.stderr
