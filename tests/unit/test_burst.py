"""decide_burst as tables over a fake clock: signal series in, burst flag over time out."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiered_operator.api.model import Burst
from tiered_operator.core.burst import BurstDecision, BurstState, decide_burst
from tiered_operator.core.scaling import Sample

T0 = 1_800_000_000.0
STEP = 15
SPEC = Burst.model_validate({"from": "triage", "to": "frontier"})  # 85 % for 300 s, exit < 70 % for 300 s


def replay(
    signal: list[float | None],
    *,
    state: BurstState | None = None,
    at_max: bool = False,
    step: float = STEP,
    stale_after: float = 120,
    timestamps: list[float] | None = None,
) -> list[BurstDecision]:
    """One decision per tick; None = no sample. `timestamps` overrides each sample's own time."""
    state, decisions = state or BurstState(), []
    for tick, value in enumerate(signal):
        now = T0 + tick * step
        stamp = timestamps[tick] if timestamps else now
        sample = None if value is None else Sample(value=value, timestamp=stamp)
        decision = decide_burst(sample, state, SPEC, now, at_max_replicas=at_max, stale_after=stale_after)
        decisions.append(decision)
        state = decision.state
    return decisions


def first_active(decisions: list[BurstDecision]) -> float | None:
    return next((i * STEP for i, d in enumerate(decisions) if d.active), None)


def transitions(decisions: list[BurstDecision]) -> int:
    return sum(d.changed for d in decisions)


ACTIVE = BurstState(active=True, since=T0 - 600, reason="entered before the test")


@pytest.mark.parametrize(
    ("name", "signal", "enters_at"),
    [
        ("steady 95: enters at 300 s, not before", [95] * 40, 300),
        ("exactly at the threshold counts", [85] * 40, 300),
        ("just below never enters", [84.9] * 40, None),
        ("one dip restarts the window", [95] * 13 + [80] + [95] * 30, 14 * STEP + 300),
        ("a missing sample restarts the window", [95] * 13 + [None] + [95] * 30, 14 * STEP + 300),
        ("short spikes never enter", ([60] * 16 + [100] * 4) * 12, None),
    ],
)
def test_entry(name: str, signal: list[float | None], enters_at: float | None) -> None:
    decisions = replay(signal)
    assert first_active(decisions) == enters_at, name
    assert transitions(decisions) == (0 if enters_at is None else 1)


@pytest.mark.parametrize(
    ("name", "signal", "leaves_at"),
    [
        ("below exit for 300 s leaves", [60] * 40, 300),
        ("between thresholds holds (hysteresis)", [78] * 240, None),
        ("exactly at exit is not below", [70] * 40, None),
        ("one bounce restarts the exit window", [60] * 10 + [75] + [60] * 30, 11 * STEP + 300),
        ("no data holds burst on", [None] * 240, None),
    ],
)
def test_exit(name: str, signal: list[float | None], leaves_at: float | None) -> None:
    decisions = replay(signal, state=ACTIVE)
    left = next((i * STEP for i, d in enumerate(decisions) if not d.active), None)
    assert left == leaves_at, name


def test_entry_and_exit_reasons() -> None:
    entered = replay([95] * 21, at_max=True)[-1]
    assert entered.changed and entered.reason == "BurstStarted"
    assert "tier at max replicas" in entered.message and "frontier" in entered.message
    assert entered.state.reason == entered.message and entered.state.since == T0 + 300
    assert "still below max" in replay([95] * 21, at_max=False)[-1].message
    left = replay([60] * 21, state=ACTIVE)[-1]
    assert left.changed and left.reason == "BurstEnded" and left.state.since == T0 + 300
    assert replay([None], state=ACTIVE)[-1].reason == "MetricsUnavailable"


def test_status_block() -> None:
    assert BurstState().to_status() == {"active": False, "since": None, "reason": ""}
    status = replay([95] * 21)[-1].state.to_status()
    assert status == {"active": True, "since": "2027-01-15T08:05:00Z", "reason": status["reason"]}
    restored = BurstState.from_status(status)
    assert (restored.active, restored.since, restored.reason) == (True, T0 + 300, status["reason"])
    assert restored.above_since is None and restored.last_sample_at is None
    assert BurstState.from_status(None) == BurstState()


def test_stale_samples_are_no_evidence() -> None:
    # Every sample 200 s old (staleAfter 120): the signal is "high" but never fresh → never enters.
    decisions = replay([95] * 100, timestamps=[T0 + i * STEP - 200 for i in range(100)])
    assert first_active(decisions) is None
    assert all(d.reason == "MetricsUnavailable" for d in decisions)


def test_a_gap_longer_than_stale_after_breaks_the_run() -> None:
    # Ticks every 150 s (> staleAfter 120) with fresh high samples: no two samples are continuous,
    # so 300 s of "high" is never proven.
    decisions = replay([95] * 20, step=150)
    assert not any(d.active for d in decisions)
    # The same ticks with staleAfter 200 are continuous: entered on the third sample (300 s after the first).
    assert [d.active for d in replay([95] * 4, step=150, stale_after=200)] == [False, False, True, True]


def test_rereading_the_same_scrape_neither_adds_nor_breaks_evidence() -> None:
    # Operator ticks every 15 s, Prometheus scrapes every 30 s: every second read repeats a timestamp.
    stamps = [T0 + (i // 2) * 30 for i in range(40)]
    decisions = replay([95] * 40, timestamps=stamps)
    assert first_active(decisions) == 300  # first sample whose own time is 300 s after the run's start


def oscillation(center: float, amplitude: float, period: float, seconds: int) -> list[float | None]:
    return [center + amplitude * math.sin(2 * math.pi * i * STEP / period) for i in range(seconds // STEP)]


@pytest.mark.parametrize("period", [30, 60, 120, 300, 590, 600, 1200])
def test_an_hour_of_85_plus_minus_3_points_never_flaps(period: float) -> None:
    signal = oscillation(85, 3, period, 3600)
    decisions = replay(signal)
    # Half-periods shorter than the 300 s window never enter; longer ones enter once and never leave
    # (the signal never falls below 70). Either way: no flap.
    assert transitions(decisions) == (0 if period < 600 else 1)
    assert not any(d.reason == "BurstEnded" for d in decisions)
    assert transitions(replay(signal, state=ACTIVE)) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=1, max_size=400))
def test_flips_are_always_at_least_a_window_apart(signal: list[float | None]) -> None:
    decisions = replay(signal)
    flips = [i * STEP for i, d in enumerate(decisions) if d.changed]
    assert all(later - earlier >= 300 for earlier, later in itertools.pairwise(flips))
    if flips:
        assert flips[0] >= 300
