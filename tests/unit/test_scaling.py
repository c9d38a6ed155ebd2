"""decide_replicas as tables over a fake clock: each row is a signal series and the replicas it must give."""

from __future__ import annotations

import pytest
from tiered_operator.api.model import AutoscalingSpec, ReplicasSpec
from tiered_operator.core.scaling import Sample, ScalingDecision, ScalingState, decide_replicas

T0 = 1_800_000_000.0  # any wall-clock origin; decisions only use differences
STEP = 15


def replay(
    signal: list[float | None],
    *,
    current: int,
    spec: AutoscalingSpec | None = None,
    bounds: ReplicasSpec | None = None,
    age: float = 0,
) -> list[ScalingDecision]:
    """One decision per tick (every 15 s), each applied before the next; None = no sample."""
    spec = spec or AutoscalingSpec()
    bounds = bounds or ReplicasSpec(min=1, max=8)
    state, decisions = ScalingState(), []
    for tick, value in enumerate(signal):
        now = T0 + tick * STEP
        sample = None if value is None else Sample(value=value, timestamp=now - age)
        decision = decide_replicas(sample, state, current, spec, bounds, now)
        decisions.append(decision)
        state, current = decision.state, decision.replicas
    return decisions


NO_DOWN_WINDOW = AutoscalingSpec(scale_down_stabilization_seconds=0)
WIDE = ReplicasSpec(min=1, max=16)


@pytest.mark.parametrize(
    ("name", "signal", "current", "spec", "bounds", "replicas", "reason"),
    [
        ("up: ceil(2 x 105/70) = 3", [105], 2, None, None, [3], "ScaledUp"),
        ("up: ceil(3 x 80/70) = 4", [80], 3, None, None, [4], "ScaledUp"),
        ("up capped by maxStep 4", [700], 1, None, None, [5], "ScaledUp"),
        ("up clamped to max", [140], 7, None, None, [8], "ScaledUp"),
        ("at max: no more", [140], 8, None, None, [8], "AtLimit"),
        ("below min is raised to min", [70], 1, None, ReplicasSpec(min=2, max=8), [2], "ScaledUp"),
        ("tolerance: +7% holds", [75], 4, None, None, [4], "WithinTolerance"),
        ("tolerance: -10% holds (edge)", [63], 10, None, WIDE, [10], "WithinTolerance"),
        ("tolerance: -11% scales", [62], 10, NO_DOWN_WINDOW, WIDE, [9], "ScaledDown"),
        ("down: ceil(4 x 35/70) = 2", [35], 4, NO_DOWN_WINDOW, None, [2], "ScaledDown"),
        ("down clamped to min", [1], 4, NO_DOWN_WINDOW, ReplicasSpec(min=3, max=8), [3], "ScaledDown"),
        ("at min: no less", [1], 3, NO_DOWN_WINDOW, ReplicasSpec(min=3, max=8), [3], "AtLimit"),
        ("down capped by maxStep", [1], 8, AutoscalingSpec(scale_down_stabilization_seconds=0, max_step=2),
         None, [6], "ScaledDown"),
        ("first decision waits a down window", [35], 4, None, None, [4], "Stabilizing"),
        ("zero replicas counts as one", [140], 0, None, ReplicasSpec(min=0, max=8), [2], "ScaledUp"),
        ("no sample: hold", [None], 5, None, None, [5], "MetricsStale"),
        ("autoscaling off: desired wins", [140], 3, AutoscalingSpec(enabled=False),
         ReplicasSpec(min=1, max=8, desired=5), [5], "Manual"),
        ("autoscaling off, no desired: hold", [140], 3, AutoscalingSpec(enabled=False), None, [3], "Manual"),
    ],
)
def test_one_decision(
    name: str,
    signal: list[float | None],
    current: int,
    spec: AutoscalingSpec | None,
    bounds: ReplicasSpec | None,
    replicas: list[int],
    reason: str,
) -> None:
    decisions = replay(signal, current=current, spec=spec, bounds=bounds)
    assert [d.replicas for d in decisions] == replicas, name
    assert decisions[-1].reason == reason, decisions[-1].message
    assert decisions[-1].changed == (replicas[-1] != current)


def test_scale_down_only_after_the_whole_window() -> None:
    # 300 s window, a tick every 15 s: the seed recommendation (4 at t=0) leaves the window at t=300.
    decisions = replay([35] * 21, current=4)
    assert [d.replicas for d in decisions] == [4] * 20 + [2]
    assert decisions[-1].state.last_scale_time == T0 + 300
    assert "scale-down stabilization" in decisions[0].message


def test_a_spike_inside_the_down_window_postpones_scale_down() -> None:
    # Low for 285 s, one tick high (recommends 8 → scales up to 8), then low: scale-down waits 300 s from
    # the spike, and then comes down by at most maxStep.
    decisions = replay([35] * 19 + [140] + [35] * 21, current=4)
    replicas = [d.replicas for d in decisions]
    assert replicas[19] == 8
    assert replicas[20:39] == [8] * 19
    assert replicas[39] == 4


def test_scale_up_stabilization_ignores_a_single_spike() -> None:
    spec = AutoscalingSpec(scale_up_stabilization_seconds=60)
    spike = replay([70] * 4 + [140] + [70] * 4, current=2, spec=spec)
    assert {d.replicas for d in spike} == {2}
    sustained = replay([70] * 4 + [140] * 6, current=2, spec=spec)
    # HPA semantics: the lowest recommendation made after now - 60 s; at 15 s ticks that is the fourth
    # high tick in a row (45 s after the first)
    assert [d.replicas for d in sustained] == [2] * 7 + [4, 4, 4]


def test_stale_samples_never_move_replicas() -> None:
    # Samples 200 s old (staleAfter 120): low signal for an hour must not scale down.
    decisions = replay([1] * 240, current=6, spec=NO_DOWN_WINDOW, age=200)
    assert {d.replicas for d in decisions} == {6}
    assert all(d.reason == "MetricsStale" and "200 s old" in d.message for d in decisions)
    assert decisions[-1].state == ScalingState()


def test_missing_data_for_long_does_not_scale_to_min_then_restarts_the_window() -> None:
    # High load scaled to 8; then an hour without data; then data returns low: holds 8 for a whole
    # down window before scaling down (the windows restart rather than trusting an old, empty memory).
    signal: list[float | None] = [140] * 2 + [None] * 240 + [10] * 21
    decisions = replay(signal, current=2)
    replicas = [d.replicas for d in decisions]
    assert replicas[1] == 8 and set(replicas[2:262]) == {8}
    assert replicas[262] == 4  # 300 s after data came back: ceil(8 x 10/70) = 2, capped by maxStep 4


def test_state_round_trips_through_json() -> None:
    decisions = replay([35, 140, 35], current=4)
    state = decisions[-1].state
    assert ScalingState.model_validate_json(state.model_dump_json()) == state
    assert ScalingState.model_validate(state.model_dump(mode="json")) == state


def test_state_is_pruned_to_the_longest_window() -> None:
    decisions = replay([35] * 400, current=4)  # 100 minutes at 15 s, windows 0 and 300 s
    assert len(decisions[-1].state.recommendations) <= 300 // STEP + 1
