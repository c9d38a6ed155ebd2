"""Burst timing over synthetic traces: how long after the signal crosses the threshold burst starts, and
whether it flaps.

Each trace is a true signal at 1 s resolution. Prometheus scrapes it every 15 s and the operator decides
every 15 s (the defaults), through `tiered_operator.cli.simulate.replay`: the same `decide_burst` and
`decide_replicas` the operator runs. Every combination of scrape phase and decision phase is replayed, so
the delays are the real spread, not one lucky alignment.

- activation delay: burst start minus the moment the signal last went to or above 85 % (goal 300-330 s)
- exit delay: burst end minus the moment the signal last went below 70 %
- flaps/hour: burst changes beyond the ones the trace calls for (entering once, leaving once), per hour
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable

from tiered_operator.api.model import Burst, InferenceTierSpec
from tiered_operator.cli.simulate import LoadModel, Point, Tick, replay

INTERVAL = 15
HOURS = 2
PHASES = (0, 4, 9, 14)  # scrape and decision phases (s), extremes included
BURST = Burst.model_validate({"from": "triage", "to": "frontier"})  # 85 % for 300 s; < 70 % for 300 s
TIER = InferenceTierSpec.model_validate(
    {"model": {"id": "m", "source": "hf://m", "parameters": "8B"}, "replicas": {"min": 1, "max": 8}}
)

Signal = Callable[[float], float]


def step(t: float) -> float:
    return 95 if 1800 <= t < 5400 else 50


def ramp(t: float) -> float:  # 40 → 100 over 30 min from t=1800, held, back down over 30 min from t=4500
    if t < 1800:
        return 40
    if t < 3600:
        return 40 + 60 * (t - 1800) / 1800
    return max(40, 100 - 60 * (t - 4500) / 1800) if t >= 4500 else 100


def spike(t: float) -> float:  # 2-minute spikes to 100 % every 10 minutes over a 60 % baseline
    return 100 if t % 600 < 120 else 60


def oscillation(t: float) -> float:  # 85 ± 3 points, period 2 min
    return 85 + 3 * math.sin(2 * math.pi * t / 120)


def slow_oscillation(t: float) -> float:  # 85 ± 3 points, period 20 min: enters once, never below 70
    return 85 + 3 * math.sin(2 * math.pi * t / 1200)


_noise = random.Random(7)
_NOISE = [_noise.uniform(-4, 4) for _ in range(HOURS * 3600 + 1)]


def noisy_step(t: float) -> float:  # the step with ±4 points of noise: 91..99 high, 46..54 low
    return step(t) + _NOISE[int(t)]


TRACES: dict[str, tuple[Signal, int]] = {  # name → (signal, burst changes it calls for)
    "step": (step, 2),
    "noisy step": (noisy_step, 2),
    "ramp": (ramp, 2),
    "spike": (spike, 0),
    "oscillation 85±3 (2 min)": (oscillation, 0),
    "oscillation 85±3 (20 min)": (slow_oscillation, 1),
}


def entered(value: float) -> bool:
    return value >= BURST.utilization_above


def left(value: float) -> bool:
    return value < BURST.exit_below


def last_crossing(signal: Signal, before: float, crossed: Callable[[float], bool]) -> float:
    """The latest whole second ≤ ``before`` at which ``crossed`` became true (and stayed true to it)."""
    t = math.floor(before)
    while t > 0 and crossed(signal(t - 1)):
        t -= 1
    return t


def run(signal: Signal, scrape_phase: int, decide_phase: int) -> list[Tick]:
    scrapes = tuple(Point(t, signal(t)) for t in range(scrape_phase, HOURS * 3600 + 1, INTERVAL))
    return replay(
        scrapes, TIER, BURST, LoadModel(), interval=INTERVAL, replicas=1, start=scrape_phase + decide_phase
    )


def measure(signal: Signal, expected: int) -> tuple[list[float], list[float], list[int], int]:
    delays, exits, flaps, decisions = [], [], [], 0
    for scrape_phase in PHASES:
        for decide_phase in PHASES:
            ticks = run(signal, scrape_phase, decide_phase)
            decisions += len(ticks)
            changes = [tick for tick in ticks if tick.burst and tick.burst.changed]
            flaps.append(max(0, len(changes) - expected))
            for tick in changes:
                if tick.burst and tick.burst.active:
                    delays.append(tick.t - last_crossing(signal, tick.t, entered))
                else:
                    exits.append(tick.t - last_crossing(signal, tick.t, left))
    return delays, exits, flaps, decisions


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if values else "-"


def main() -> int:
    runs = len(PHASES) ** 2
    print(
        f"burst timing: enter ≥ {BURST.utilization_above:g} for {BURST.for_seconds} s, exit < "
        f"{BURST.exit_below:g} for {BURST.exit_for_seconds} s; scrape and decide every {INTERVAL} s; "
        f"{runs} phase combinations x {HOURS} h per trace"
    )
    print(f"{'trace':<27} {'activation delay s':>18} {'exit delay s':>12} {'entries':>7} {'flaps/hour':>10}")
    started, total, worst_flaps, all_delays = time.perf_counter(), 0, 0.0, []
    for name, (signal, expected) in TRACES.items():
        delays, exits, flaps, decisions = measure(signal, expected)
        total += decisions
        per_hour = max(flaps) / HOURS
        worst_flaps = max(worst_flaps, per_hour)
        all_delays += delays
        entries = f"{len(delays) / runs:g}"
        print(f"{name:<27} {spread(delays):>18} {spread(exits):>12} {entries:>7} {per_hour:>10g}")
    elapsed = time.perf_counter() - started
    print(f"{total} ticks (decide_replicas + decide_burst): {elapsed / total * 1e6:.0f} µs per tick")
    ok = all(300 <= d <= 330 for d in all_delays) and worst_flaps == 0
    print(f"goal 300 s ≤ activation delay ≤ 330 s and 0 flaps: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
