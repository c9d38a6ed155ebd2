"""Replica decisions for a tier: how many replicas, from one signal sample, a state and a clock.

Owns the Kubernetes-HPA arithmetic, applied to a GPU signal instead of pod CPU:

1. *Recommendation*: outside the tolerance band, ``ceil(current x signal / target)``; inside it, ``current``.
2. *Stabilization*: every recommendation is remembered with its time. A scale-up goes only as high as the
   lowest recommendation of the scale-up window; a scale-down only as low as the highest recommendation of
   the scale-down window (so one dip or one spike does not move replicas).
3. *Step cap* (``maxStep`` replicas per decision), then *clamp* to ``replicas.min``/``max``.
4. A missing or stale sample never moves replicas: hold (only the clamp applies, because that is spec,
   not data). When autoscaling is off, ``replicas.desired`` (the ``/scale`` subresource) is honoured.

The state is a small frozen model that serialises to JSON, so the operator keeps it in the tier's status
and a restarted operator continues the same windows. The same function serves the operator's timer (one
fresh sample per tick) and ``tiered simulate`` (a replayed trace).

Pure: no kopf, kubernetes, HTTP or clock imports; time comes in as ``now`` (unix seconds).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tiered_operator.api.model import AutoscalingSpec, ReplicasSpec

ScalingReason = Literal[
    "ScaledUp",
    "ScaledDown",
    "WithinTolerance",
    "Stabilizing",
    "AtLimit",
    "MetricsStale",
    "Manual",
]


class Sample(BaseModel):
    """One reading of a tier's signal and the time (unix seconds) Prometheus took it."""

    model_config = ConfigDict(frozen=True)

    value: float
    timestamp: float


def fresh(sample: Sample | None, now: float, stale_after: float) -> Sample | None:
    """The sample if it is present, finite and no older than ``stale_after`` seconds, else None."""
    if sample is None or not math.isfinite(sample.value) or now - sample.timestamp > stale_after:
        return None
    return sample


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: float = Field(description="When it was made (unix seconds).")
    replicas: int = Field(description="Unclamped replica count the signal asked for.")


class ScalingState(BaseModel):
    """What `decide_replicas` remembers between calls. Persist ``model_dump(mode="json")`` and restore with
    ``ScalingState.model_validate(...)``; an empty state is a valid start."""

    model_config = ConfigDict(frozen=True)

    recommendations: tuple[Recommendation, ...] = Field(
        default=(), description="Recent recommendations, oldest first, pruned to the longer window."
    )
    last_scale_time: float | None = Field(default=None, description="When replicas last changed.")


class ScalingDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    replicas: int = Field(description="Replicas to run now.")
    changed: bool = Field(description="replicas differs from the current count.")
    reason: ScalingReason = Field(description="CamelCase reason for a condition or Event.")
    message: str = Field(description="One sentence a person can read.")
    state: ScalingState
    signal: float | None = Field(default=None, description="The fresh signal used, if any.")


def clamp(replicas: int, bounds: ReplicasSpec) -> int:
    return max(bounds.min, min(bounds.max, replicas))


def recommend(current: int, signal: float, spec: AutoscalingSpec) -> int:
    """HPA's raw recommendation. A tier at zero replicas counts as one, so a signal can still lift it."""
    ratio = signal / spec.target
    if abs(ratio - 1) <= spec.tolerance + 1e-9:  # 63/70 is a 10% deviation, not 10.000000000000009%
        return current
    return math.ceil(max(current, 1) * ratio - 1e-9)  # 2 x 105/70 is 3, not 3.0000000000000004


def decide_replicas(
    sample: Sample | None,
    state: ScalingState,
    current_replicas: int,
    spec: AutoscalingSpec,
    bounds: ReplicasSpec,
    now: float,
) -> ScalingDecision:
    """Replicas for a tier now. ``sample`` is the newest reading, or None when metrics are unavailable."""
    usable = fresh(sample, now, spec.stale_after_seconds)

    def decision(
        replicas: int, reason: ScalingReason, message: str, new_state: ScalingState
    ) -> ScalingDecision:
        changed = replicas != current_replicas
        if changed:
            new_state = new_state.model_copy(update={"last_scale_time": now})
        return ScalingDecision(
            replicas=replicas,
            changed=changed,
            reason=reason,
            message=message,
            state=new_state,
            signal=usable.value if usable else None,
        )

    if not spec.enabled:
        source = "replicas.desired" if bounds.desired is not None else "the current count"
        wanted = clamp(bounds.desired if bounds.desired is not None else current_replicas, bounds)
        return decision(wanted, "Manual", f"autoscaling off: {wanted} replicas from {source}", state)
    if usable is None:
        held = clamp(current_replicas, bounds)
        if sample is None:
            why = "no sample"
        elif not math.isfinite(sample.value):
            why = f"sample is {sample.value}"
        else:
            why = f"newest sample is {now - sample.timestamp:.0f} s old"
        return decision(held, "MetricsStale", f"no fresh metrics ({why}): holding {held} replicas", state)

    window = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    kept = tuple(r for r in state.recommendations if r.at > now - window)
    if not kept:
        # First decision, or the first after a gap longer than both windows: start the windows from the
        # current count, so a scale-down needs a whole scale-down window of evidence (HPA does the same).
        kept = (Recommendation(at=now, replicas=current_replicas),)
    raw = recommend(current_replicas, usable.value, spec)

    up_cut = now - spec.scale_up_stabilization_seconds
    down_cut = now - spec.scale_down_stabilization_seconds
    up_limit = min([raw, *(r.replicas for r in kept if r.at > up_cut)])
    down_limit = max([raw, *(r.replicas for r in kept if r.at > down_cut)])
    stabilized = min(max(current_replicas, up_limit), down_limit)
    stepped = max(current_replicas - spec.max_step, min(current_replicas + spec.max_step, stabilized))
    replicas = clamp(stepped, bounds)
    new_state = state.model_copy(update={"recommendations": (*kept, Recommendation(at=now, replicas=raw))})

    seen = f"signal {usable.value:.4g} vs target {spec.target:g}"
    if replicas != current_replicas:
        direction: ScalingReason = "ScaledUp" if replicas > current_replicas else "ScaledDown"
        return decision(replicas, direction, f"{seen}: {current_replicas} → {replicas} replicas", new_state)
    if raw == current_replicas:
        fits = f"{seen}: {replicas} replicas fit (tolerance ±{spec.tolerance:g})"
        return decision(replicas, "WithinTolerance", fits, new_state)
    if clamp(raw, bounds) == current_replicas:
        limit = "max" if raw > current_replicas else "min"
        return decision(
            replicas, "AtLimit", f"{seen}: wants {raw}, held at replicas.{limit}={replicas}", new_state
        )
    window_name = "scale-up" if raw > current_replicas else "scale-down"
    return decision(
        replicas,
        "Stabilizing",
        f"{seen}: wants {raw}, holding {replicas} for the {window_name} stabilization window",
        new_state,
    )
