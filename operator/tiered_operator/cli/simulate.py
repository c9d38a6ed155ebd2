"""`tiered simulate`: replay a load trace through the same scaling and burst decisions the operator makes.

The core (`parse_trace`, `LoadModel`, `replay`, `summarize`) is pure; `simulate` only reads files, prints
and plots. Each tick (every ``--interval`` seconds, default the tier's ``intervalSeconds``) takes the
newest trace point at or before it as the sample, with that point's own timestamp, exactly like a
Prometheus read: gaps in the trace longer than ``staleAfterSeconds`` make the sample stale and the
decisions hold. A blank value is a missing sample.

Load model. A trace holds ``timestamp`` and one of:
- ``utilization``: the tier's signal (percent). With ``--trace-replicas N`` it is read as "measured on N
  replicas" and the replay is closed-loop: demand = utilization x N, and with R replicas the signal is
  min(100, utilization x N / R). Without it the signal is replayed as is (open loop: scaling does not
  lower it).
- ``rps``: requests per second; ``--replica-rps C`` says how many one replica serves at 100 %, so with R
  replicas the signal is min(100, 100 x rps / (R x C)).
Replicas are assumed ready the moment they are decided (no start-up delay).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from tiered_operator.api.model import Burst, InferenceTier, InferenceTierSpec, RoutingPolicy
from tiered_operator.cli import UsageError
from tiered_operator.cli.commands import _load as load_objects  # files or folders; errors → UsageError
from tiered_operator.core.autoscale import decide_tick
from tiered_operator.core.burst import BurstDecision, BurstState
from tiered_operator.core.plan import PlanError, plan_capacity
from tiered_operator.core.scaling import Sample, ScalingDecision, ScalingState

TraceKind = Literal["utilization", "rps"]


class TraceError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


@dataclass(frozen=True)
class Point:
    t: float
    value: float | None


@dataclass(frozen=True)
class Trace:
    kind: TraceKind
    points: tuple[Point, ...]


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def parse_trace(text: str) -> Trace:
    """CSV with a header ``timestamp,utilization`` or ``timestamp,rps``; ``#`` lines are comments.
    Timestamps are seconds (any origin) or ISO 8601, strictly increasing. Raises TraceError."""
    lines = enumerate(text.splitlines(), 1)
    rows = [(n, line) for n, line in lines if line.strip() and not line.startswith("#")]
    if not rows:
        raise TraceError(1, "empty trace: expected a header timestamp,utilization or timestamp,rps")
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    if len(columns) != 2 or columns[0] != "timestamp" or columns[1] not in ("utilization", "rps"):
        raise TraceError(header_line, f"header must be timestamp,utilization or timestamp,rps: {header!r}")
    kind: TraceKind = "utilization" if columns[1] == "utilization" else "rps"
    points: list[Point] = []
    for number, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != 2:
            raise TraceError(number, f"expected 2 fields, found {len(cells)}: {line!r}")
        try:
            t = _timestamp(cells[0])
        except ValueError:
            raise TraceError(number, f"timestamp {cells[0]!r} is neither seconds nor ISO 8601") from None
        try:
            value = float(cells[1]) if cells[1] else None
        except ValueError:
            raise TraceError(number, f"{kind} {cells[1]!r} is not a number") from None
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise TraceError(number, f"{kind} must be a finite number ≥ 0, not {cells[1]}")
        if points and t <= points[-1].t:
            raise TraceError(number, f"timestamp {cells[0]} does not increase")
        points.append(Point(t, value))
    if len(points) < 2:
        raise TraceError(rows[-1][0], "a trace needs at least two points")
    return Trace(kind, tuple(points))


@dataclass(frozen=True)
class LoadModel:
    """Turns a trace value into the tier's signal at a replica count (see the module docstring)."""

    per_replica: float | None = None
    """Trace units one replica serves at 100 %; None replays the value as the signal (open loop)."""

    def signal(self, value: float | None, replicas: int) -> float | None:
        if value is None or self.per_replica is None:
            return value
        if replicas == 0:
            return None  # no pods, no GPU signal
        return min(100.0, 100.0 * value / (replicas * self.per_replica))


@dataclass(frozen=True)
class Tick:
    t: float
    signal: float | None
    before: int
    """Replicas before this tick's decision (``scaling.replicas`` after it)."""
    scaling: ScalingDecision
    burst: BurstDecision | None

    @property
    def replicas(self) -> int:
        return self.scaling.replicas


def replay(
    points: tuple[Point, ...],
    tier: InferenceTierSpec,
    burst: Burst | None,
    load: LoadModel,
    *,
    interval: float,
    replicas: int,
    start: float | None = None,
) -> list[Tick]:
    """One decision per ``interval`` from ``start`` (default: the first point) to the last point."""
    scaling_state, burst_state = ScalingState(), BurstState()
    ticks: list[Tick] = []
    first = points[0].t if start is None else start
    index, count, now = -1, 0, first
    while now <= points[-1].t:
        while index + 1 < len(points) and points[index + 1].t <= now:
            index += 1
        signal = load.signal(points[index].value, replicas) if index >= 0 else None
        sample = None if signal is None else Sample(value=signal, timestamp=points[index].t)
        decision = decide_tick(sample, scaling_state, replicas, tier,
                               {"burst": (burst, burst_state)} if burst is not None else {}, now)
        scaling, bursting = decision.scaling, decision.bursts.get("burst")
        if bursting is not None:
            burst_state = bursting.state
        ticks.append(Tick(now, signal, replicas, scaling, bursting))
        scaling_state, replicas = scaling.state, scaling.replicas
        count += 1
        now = first + count * interval  # not now += interval: no drift with fractional intervals
    return ticks


@dataclass(frozen=True)
class Summary:
    seconds: float
    replica_hours: float
    gpu_hours: float
    burst_share: float | None
    scale_events: int
    burst_entries: int
    burst_exits: int


def summarize(ticks: list[Tick], interval: float, gpus_per_replica: float) -> Summary:
    replica_hours = sum(tick.replicas for tick in ticks) * interval / 3600
    bursts = [tick.burst for tick in ticks if tick.burst is not None]
    return Summary(
        seconds=len(ticks) * interval,
        replica_hours=replica_hours,
        gpu_hours=replica_hours * gpus_per_replica,
        burst_share=sum(b.active for b in bursts) / len(ticks) if bursts else None,
        scale_events=sum(tick.scaling.changed for tick in ticks),
        burst_entries=sum(b.changed and b.active for b in bursts),
        burst_exits=sum(b.changed and not b.active for b in bursts),
    )


# ---------------------------------------------------------------------------------------------------------
# The command


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", action="append", type=Path, required=True,
        help="YAML file or folder with the InferenceTier (and the RoutingPolicy whose burst names it); "
        "repeatable",
    )  # fmt: skip
    add = parser.add_argument
    add("--trace", type=Path, required=True, help="CSV: timestamp,utilization or timestamp,rps")
    add("--tier", help="InferenceTier name, when the files hold several")
    add("--interval", type=float, help="seconds between decisions (default: intervalSeconds)")
    add("--replicas", type=int, help="replicas at the start (default: replicas.desired or min)")
    add("--replica-rps", type=float, help="requests/s one replica serves at 100%% (rps traces)")
    add("--trace-replicas", type=int, help="replicas the utilization trace was measured on (closed loop)")
    add("--plot", type=Path, help="also draw the timeline into this PNG")


def _tier_and_burst(args: argparse.Namespace) -> tuple[InferenceTier, Burst | None]:
    objects = [obj for _, obj in load_objects(args.filename)]
    tiers = [o for o in objects if isinstance(o, InferenceTier) and args.tier in (None, o.metadata.name)]
    names = ", ".join(str(f) for f in args.filename)
    if len(tiers) != 1:
        wanted = f"InferenceTier {args.tier!r}" if args.tier else "exactly one InferenceTier (or pass --tier)"
        raise UsageError(f"{names}: expected {wanted}, found {len(tiers)}")
    tier = tiers[0]
    bursts = [
        o.spec.burst
        for o in objects
        if isinstance(o, RoutingPolicy)
        and o.spec.burst is not None
        and o.spec.tier(o.spec.burst.from_).tier_ref == tier.metadata.name
    ]
    return tier, bursts[0] if bursts else None


def _load_model(trace: Trace, args: argparse.Namespace) -> LoadModel:
    if trace.kind == "rps":
        if not args.replica_rps or args.replica_rps <= 0:
            raise UsageError(f"{args.trace}: an rps trace needs --replica-rps (requests/s of one replica)")
        return LoadModel(per_replica=args.replica_rps)
    if args.trace_replicas is not None:
        if args.trace_replicas < 1:
            raise UsageError("--trace-replicas must be at least 1")
        return LoadModel(per_replica=100 / args.trace_replicas)
    return LoadModel()


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600:d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def timeline(ticks: list[Tick], origin: float) -> list[str]:
    """Rows for the first tick and every tick where replicas or burst changed."""
    lines = [f"{'time':>8}  {'signal':>6}  {'replicas':>8}  {'burst':>5}  event"]
    for index, tick in enumerate(ticks):
        events = [f"{tick.scaling.reason}: {tick.scaling.message}"] if tick.scaling.changed else []
        if tick.burst is not None and tick.burst.changed:
            events.append(f"{tick.burst.reason}: {tick.burst.message}")
        if index and not events:
            continue
        signal = "-" if tick.signal is None else f"{tick.signal:.1f}"
        replicas = f"{tick.before}→{tick.replicas}" if tick.scaling.changed else str(tick.replicas)
        burst = "-" if tick.burst is None else ("on" if tick.burst.active else "off")
        clock = _clock(tick.t - origin)
        lines.append(f"{clock:>8}  {signal:>6}  {replicas:>8}  {burst:>5}  {'; '.join(events)}")
    return lines


def plot(ticks: list[Tick], origin: float, tier: InferenceTier, burst: Burst | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [(tick.t - origin) / 3600 for tick in ticks]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 5.5), height_ratios=[3, 2])
    top.plot(hours, [math.nan if t.signal is None else t.signal for t in ticks], lw=1, label="signal")
    top.axhline(tier.spec.autoscaling.target, color="tab:green", ls="--", lw=1, label="target")
    if burst is not None:
        top.axhline(burst.utilization_above, color="tab:red", ls=":", lw=1, label="burst enter")
        top.axhline(burst.exit_below, color="tab:orange", ls=":", lw=1, label="burst exit")
        active = [bool(t.burst and t.burst.active) for t in ticks]
        top.fill_between(hours, 0, 1, where=active, step="post", color="tab:red", alpha=0.12,
                         transform=top.get_xaxis_transform(), label="in burst")  # fmt: skip
    top.set_ylabel("signal")
    top.set_title(f"InferenceTier {tier.metadata.name}: replayed trace")
    top.legend(loc="upper right", fontsize="small")
    bottom.step(hours, [t.replicas for t in ticks], where="post", color="tab:purple")
    bottom.set_ylim(0, tier.spec.replicas.max + 1)
    bottom.set_ylabel("replicas")
    bottom.set_xlabel("hours since trace start")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def simulate(args: argparse.Namespace) -> int:
    tier, burst = _tier_and_burst(args)
    try:
        trace = parse_trace(args.trace.read_text())
    except OSError as error:
        raise UsageError(f"cannot read {args.trace}: {error.strerror or error}") from None
    except TraceError as error:
        raise UsageError(f"{args.trace}:{error.line}: {error.message}") from None
    load = _load_model(trace, args)
    spec = tier.spec
    interval = args.interval or spec.autoscaling.interval_seconds
    if interval <= 0:
        raise UsageError("--interval must be positive")
    start = args.replicas if args.replicas is not None else (spec.replicas.desired or spec.replicas.min)
    try:
        gpus = plan_capacity(spec).gpus_per_replica
    except PlanError as error:
        raise UsageError(f"InferenceTier/{tier.metadata.name}: spec: {error}") from None

    ticks = replay(trace.points, spec, burst, load, interval=interval, replicas=start)
    summary = summarize(ticks, interval, gpus)
    origin = trace.points[0].t
    loop = "open loop" if load.per_replica is None else "closed loop"
    burst_text = (
        f"burst ≥ {burst.utilization_above:g} for {burst.for_seconds} s, < {burst.exit_below:g} for "
        f"{burst.exit_for_seconds} s → {burst.to}" if burst else "no burst (no RoutingPolicy burst names it)"
    )  # fmt: skip
    print(
        f"InferenceTier {tier.metadata.name}: replicas {spec.replicas.min}..{spec.replicas.max}, "
        f"target {spec.autoscaling.target:g}, every {interval:g} s; {burst_text}"
    )
    span = _clock(summary.seconds)
    print(f"trace {args.trace}: {len(trace.points)} {trace.kind} points over {span} ({loop})")
    print("\n".join(timeline(ticks, origin)))
    share = "-" if summary.burst_share is None else f"{summary.burst_share:.1%}"
    print(
        f"GPU-hours {summary.gpu_hours:.2f} ({summary.replica_hours:.2f} replica-hours x {gpus:g} GPU), "
        f"cost ${summary.gpu_hours * spec.pricing.gpu_hour_usd:.2f}; scale events {summary.scale_events}; "
        f"time in burst {share} ({summary.burst_entries} entries, {summary.burst_exits} exits)"
    )
    if args.plot:
        plot(ticks, origin, tier, burst, args.plot)
        print(f"plot written to {args.plot}")
    return 0
