"""Burst decisions: when a tier's overflow goes to the burst target, from samples, a state and a clock.

Enter when the signal has stayed at or above ``burst.utilizationAbove`` for the whole ``forSeconds`` window;
leave only after it has stayed below ``burst.exitBelow`` for ``exitForSeconds``. Between the two
thresholds nothing changes (hysteresis), so a signal oscillating around the entry threshold never flaps.

"Stayed" is judged by continuous evidence, measured on the samples' own timestamps: a run starts at the
first sample on its side of the threshold and holds while every following sample stays there. A missing
or stale sample, or a gap between samples longer than ``stale_after``, breaks both runs (no evidence is
not "stayed above"); the burst flag itself is held while data is missing. Re-reading the same sample
(ticks faster than Prometheus scrapes) adds no evidence and breaks nothing.

The same function serves the operator's timer (one fresh sample per tick) and ``tiered simulate``.
Pure: no kopf, kubernetes, HTTP or clock imports; time comes in as ``now`` (unix seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tiered_operator.api.model import Burst
from tiered_operator.api.status import timestamp
from tiered_operator.core.scaling import Sample, fresh

BurstReason = Literal["BurstStarted", "BurstEnded", "Bursting", "NotBursting", "MetricsUnavailable"]


class BurstState(BaseModel):
    """What `decide_burst` remembers between calls. Persist ``model_dump(mode="json")`` and restore with
    ``BurstState.model_validate(...)``, or keep it in memory and restore only the public block with
    `from_status`; an empty state is a valid start (not bursting)."""

    model_config = ConfigDict(frozen=True)

    active: bool = False
    since: float | None = Field(default=None, description="When `active` last flipped (unix seconds).")
    reason: str = Field(default="", description="Why it last flipped.")
    above_since: float | None = Field(default=None, description="Start of the unbroken run ≥ entry.")
    below_since: float | None = Field(default=None, description="Start of the unbroken run < exit.")
    last_sample_at: float | None = Field(default=None, description="Timestamp of the last sample counted.")

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> BurstState:
        """A state from the public ``burst`` block alone (after a restart, say): the flag survives and the
        evidence runs start afresh, which can only delay a change, never cause one."""
        status = status or {}
        since = status.get("since")
        return cls(
            active=bool(status.get("active", False)),
            since=datetime.fromisoformat(since).timestamp() if since else None,
            reason=str(status.get("reason") or ""),
        )

    def to_status(self) -> dict[str, Any]:
        """The public ``burst: {active, since, reason}`` block of the RoutingPolicy status."""
        since = None
        if self.since is not None:
            since = timestamp(datetime.fromtimestamp(self.since, UTC))
        return {"active": self.active, "since": since, "reason": self.reason}


class BurstDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    active: bool
    changed: bool = Field(description="active differs from the previous state.")
    reason: BurstReason = Field(description="CamelCase reason for a condition or Event.")
    message: str = Field(description="One sentence a person can read.")
    state: BurstState


def _run_start(previous: float | None, on_side: bool, continuous: bool, timestamp: float) -> float | None:
    if not on_side:
        return None
    return previous if continuous and previous is not None else timestamp


def decide_burst(
    sample: Sample | None,
    state: BurstState,
    spec: Burst,
    now: float,
    *,
    at_max_replicas: bool,
    stale_after: float,
) -> BurstDecision:
    """Burst on or off now. ``sample`` is the newest reading, or None when metrics are unavailable;
    ``stale_after`` is the tier's ``autoscaling.staleAfterSeconds``."""
    usable = fresh(sample, now, stale_after)
    if usable is None:
        held = state.model_copy(update={"above_since": None, "below_since": None, "last_sample_at": None})
        flag = "on" if state.active else "off"
        return BurstDecision(
            active=state.active,
            changed=False,
            reason="MetricsUnavailable",
            message=f"no fresh metrics: burst held {flag}",
            state=held,
        )

    if state.last_sample_at is None or usable.timestamp > state.last_sample_at:  # new evidence
        continuous = (
            state.last_sample_at is not None and usable.timestamp - state.last_sample_at <= stale_after
        )
        state = state.model_copy(
            update={
                "above_since": _run_start(
                    state.above_since, usable.value >= spec.utilization_above, continuous, usable.timestamp
                ),
                "below_since": _run_start(
                    state.below_since, usable.value < spec.exit_below, continuous, usable.timestamp
                ),
                "last_sample_at": usable.timestamp,
            }
        )
    latest = state.last_sample_at
    assert latest is not None, "set above from this or an earlier sample"
    held_above = latest - state.above_since if state.above_since is not None else None
    held_below = latest - state.below_since if state.below_since is not None else None
    seen = f"signal {usable.value:.4g}"

    if not state.active and held_above is not None and held_above >= spec.for_seconds:
        capacity = "tier at max replicas" if at_max_replicas else "tier still below max replicas"
        why = (
            f"signal ≥ {spec.utilization_above:g} for {held_above:.0f} s ({capacity}): "
            f"overflow of {spec.from_} goes to {spec.to}"
        )
        new = state.model_copy(update={"active": True, "since": now, "reason": why})
        return BurstDecision(active=True, changed=True, reason="BurstStarted", message=why, state=new)
    if state.active and held_below is not None and held_below >= spec.exit_for_seconds:
        why = f"signal < {spec.exit_below:g} for {held_below:.0f} s: {spec.from_} serves its own overflow"
        new = state.model_copy(update={"active": False, "since": now, "reason": why})
        return BurstDecision(active=False, changed=True, reason="BurstEnded", message=why, state=new)

    if state.active:
        progress = (
            f"below {spec.exit_below:g} for {held_below:.0f} of {spec.exit_for_seconds} s"
            if held_below is not None
            else f"not below {spec.exit_below:g}"
        )
        return BurstDecision(
            active=True, changed=False, reason="Bursting", message=f"{seen}: {progress}", state=state
        )
    progress = (
        f"≥ {spec.utilization_above:g} for {held_above:.0f} of {spec.for_seconds} s"
        if held_above is not None
        else f"below {spec.utilization_above:g}"
    )
    return BurstDecision(
        active=False, changed=False, reason="NotBursting", message=f"{seen}: {progress}", state=state
    )
