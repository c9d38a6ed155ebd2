"""One autoscaler tick as a pure decision, shared by the operator's autoscale loop and `tiered simulate`.

`decide_tick` takes a sample (or None), the tier's scaling state and the burst states of the policies that
burst from the tier, and returns the replica decision and one burst verdict per policy. `autoscale_record`
and `burst_record` turn them into what the tier's and the policy's status writers record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tiered_operator.api import conditions as c
from tiered_operator.api.model import Burst, InferenceTierSpec
from tiered_operator.api.status import BurstStatus, WantedCondition, timestamp
from tiered_operator.core.burst import BurstDecision, BurstState, decide_burst
from tiered_operator.core.reconcile import AutoscaleRecord, BurstRecord
from tiered_operator.core.scaling import Sample, ScalingDecision, ScalingState, decide_replicas


@dataclass(frozen=True)
class TickDecision:
    scaling: ScalingDecision
    bursts: dict[str, BurstDecision]


def decide_tick(
    sample: Sample | None,
    scaling: ScalingState,
    replicas: int,
    spec: InferenceTierSpec,
    bursts: Mapping[str, tuple[Burst, BurstState]],
    now: float,
) -> TickDecision:
    """Replicas for the tier, then burst for each policy (which needs to know whether the tier is at max)."""
    decision = decide_replicas(sample, scaling, replicas, spec.autoscaling, spec.replicas, now)
    at_max = decision.replicas >= spec.replicas.max
    return TickDecision(decision, {
        key: decide_burst(sample, state, burst, now, at_max_replicas=at_max,
                          stale_after=spec.autoscaling.stale_after_seconds)
        for key, (burst, state) in bursts.items()
    })


def autoscale_record(decision: ScalingDecision, metrics: WantedCondition) -> AutoscaleRecord:
    scaling = WantedCondition(type=c.SCALING, status="True" if decision.changed else "False",
                              reason=decision.reason, message=decision.message)
    last = decision.state.last_scale_time
    return AutoscaleRecord(
        replicas=decision.replicas,
        conditions=(metrics, scaling),
        utilization=None if decision.signal is None else round(decision.signal, 1),
        last_scale_time=None if last is None else timestamp(datetime.fromtimestamp(last, UTC)),
    )


def burst_record(verdict: BurstDecision) -> BurstRecord:
    return BurstRecord(
        status=BurstStatus.model_validate(verdict.state.to_status()),
        condition=WantedCondition(type=c.BURSTING, status="True" if verdict.active else "False",
                                  reason=verdict.reason, message=verdict.message),
    )
