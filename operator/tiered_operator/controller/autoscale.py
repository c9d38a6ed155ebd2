"""The autoscaling and burst loop of one tier: read the signal, decide, apply through `reconcile_tier`.

One tick per tier per `autoscaling.intervalSeconds`: the signal comes from a `SignalSource`; replicas come
from `scaling.decide_replicas`, written by the same render path as every other change (so the spec hash
stays put); burst comes from `burst.decide_burst` for every RoutingPolicy that bursts from this tier, and
lands in that policy's status. Metrics missing → hold replicas and burst, say so in `MetricsAvailable`,
and retry with exponential backoff.

State between ticks (recommendation windows, burst evidence) lives in memory (`LoopState`); a restarted
operator starts the windows afresh, which can only delay a change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tiered_operator.api import conditions as c
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import InvalidObject, parse_spec
from tiered_operator.controller.metrics import MetricsUnavailable, SignalSource, signal_query
from tiered_operator.core.burst import BurstState, decide_burst
from tiered_operator.core.reconcile import ChildWriter, Event, Outcome, reconcile_tier
from tiered_operator.core.render import desired_replicas
from tiered_operator.core.scaling import Sample, ScalingState, decide_replicas

MAX_BACKOFF_SECONDS = 300.0
NO_PROMETHEUS = "NoPrometheus"


@dataclass
class TierLoop:
    """In-memory state of one tier's loop."""

    scaling: ScalingState = field(default_factory=ScalingState)
    next_tick: float = 0.0
    failures: int = 0
    # The replicas last decided. Resync reconciles read this rather than status, which kopf patches only
    # after a handler returns: a resync in between would otherwise undo a fresh scale.
    replicas: int | None = None


@dataclass
class LoopState:
    tiers: dict[str, TierLoop] = field(default_factory=dict)  # by tier uid
    bursts: dict[tuple[str, str], BurstState] = field(default_factory=dict)  # by (namespace, policy)


@dataclass
class PolicyPatch:
    namespace: str
    name: str
    status: dict[str, Any]
    events: list[Event]


@dataclass
class TickResult:
    tier: Outcome = field(default_factory=Outcome)
    policies: list[PolicyPatch] = field(default_factory=list)


def _merge_status(outcome: Outcome, existing: Mapping[str, Any], extra: Mapping[str, Any],
                  updates: list[c.Condition], generation: int, now: float) -> None:
    """Fold autoscaler keys and conditions into a reconcile outcome, keeping only what changed."""
    base_conditions = outcome.status_patch.get("conditions", existing.get("conditions"))
    conditions = c.merge_conditions(base_conditions, updates, now=datetime.fromtimestamp(now, UTC),
                                    generation=generation)
    if conditions != existing.get("conditions"):
        outcome.status_patch["conditions"] = conditions
    for key, value in extra.items():
        merged = {**(existing.get(key) or {}), **(outcome.status_patch.get(key) or {}), **value} \
            if isinstance(value, dict) else value
        if existing.get(key) != merged:
            outcome.status_patch[key] = merged


def _bursting_policies(
    tier_name: str, policies: list[Mapping[str, Any]]
) -> list[tuple[RoutingPolicy, Mapping[str, Any]]]:
    """The policies (with their current status) whose burst starts from this tier."""
    found = []
    for body in policies:
        try:
            policy = parse_spec(body)
        except InvalidObject:
            continue
        assert isinstance(policy, RoutingPolicy)
        burst = policy.spec.burst
        if burst is not None and policy.spec.tier(burst.from_).tier_ref == tier_name:
            found.append((policy, body.get("status") or {}))
    return found


async def autoscale_tick(
    body: Mapping[str, Any],
    actual: Mapping[str, Any] | None,
    policies: list[Mapping[str, Any]],
    source: SignalSource | None,
    state: LoopState,
    writer: ChildWriter,
    now: float,
) -> TickResult | None:
    """One tick of a tier's loop, or None when it is not due (or the tier is invalid or not autoscaled)."""
    try:
        tier = parse_spec(body)
    except InvalidObject:
        return None  # reconcile_tier reports it
    assert isinstance(tier, InferenceTier)
    spec = tier.spec
    if not spec.autoscaling.enabled:
        return None
    loop = state.tiers.setdefault(tier.metadata.uid, TierLoop())
    if now < loop.next_tick:
        return None

    existing = body.get("status") or {}
    generation = tier.metadata.generation
    current = desired_replicas(spec, (existing.get("replicas") or {}).get("desired"))
    sample: Sample | None = None
    if source is None:
        metrics = c.Condition(type=c.METRICS_AVAILABLE, status="False", reason=NO_PROMETHEUS,
                              message="no Prometheus configured (TIERED_PROMETHEUS_URL): replicas held")
    else:
        try:
            sample = await asyncio.to_thread(
                source.read, signal_query(spec.autoscaling, tier.metadata.namespace, tier.metadata.name), now)
        except MetricsUnavailable as error:
            metrics = c.Condition(type=c.METRICS_AVAILABLE, status="False", reason=error.reason,
                                  message=f"{error}; holding {current} replicas and burst state")
        else:
            signal = "the custom query" if spec.autoscaling.query else spec.autoscaling.metric
            metrics = c.Condition(type=c.METRICS_AVAILABLE, status="True", reason="SignalRead",
                                  message=f"reading {signal} from Prometheus")
    # Healthy: tick every interval. Failing: back off exponentially, capped.
    loop.failures = 0 if sample is not None else loop.failures + 1
    delay = spec.autoscaling.interval_seconds * (2 ** min(loop.failures - 1, 8) if loop.failures else 1)
    loop.next_tick = now + min(delay, max(MAX_BACKOFF_SECONDS, spec.autoscaling.interval_seconds))

    decision = decide_replicas(sample, loop.scaling, current, spec.autoscaling, spec.replicas, now)
    loop.scaling, loop.replicas = decision.state, decision.replicas
    result = TickResult()
    if decision.changed:
        result.tier = await reconcile_tier(body, actual, writer, datetime.fromtimestamp(now, UTC),
                                           autoscaled_replicas=decision.replicas)
        # The scale Event says why; reconcile's "RayServiceRescaled" would only repeat it.
        result.tier.events = [Event("Normal", decision.reason, decision.message)] + [
            event for event in result.tier.events if event.reason != "RayServiceRescaled"]
    scaling = c.Condition(type=c.SCALING, status="True" if decision.changed else "False",
                          reason=decision.reason, message=decision.message)
    extra: dict[str, Any] = {"replicas": {"desired": decision.replicas}}
    if decision.signal is not None:
        extra["utilization"] = round(decision.signal, 1)
    if decision.state.last_scale_time is not None:
        extra["lastScaleTime"] = c.timestamp(datetime.fromtimestamp(decision.state.last_scale_time, UTC))
    _merge_status(result.tier, existing, extra, [metrics, scaling], generation, now)

    at_max = decision.replicas >= spec.replicas.max
    for policy, policy_status in _bursting_policies(tier.metadata.name, policies):
        assert policy.spec.burst is not None
        key = (policy.metadata.namespace, policy.metadata.name)
        previous = state.bursts.get(key) or BurstState.from_status(policy_status.get("burst"))
        verdict = decide_burst(sample, previous, policy.spec.burst, now, at_max_replicas=at_max,
                               stale_after=spec.autoscaling.stale_after_seconds)
        state.bursts[key] = verdict.state
        if not verdict.changed:
            continue
        bursting = c.Condition(type=c.BURSTING, status="True" if verdict.active else "False",
                               reason=verdict.reason, message=verdict.message)
        conditions = c.merge_conditions(policy_status.get("conditions"), [bursting],
                                        now=datetime.fromtimestamp(now, UTC),
                                        generation=policy.metadata.generation)
        event = Event("Warning" if verdict.active else "Normal", verdict.reason, verdict.message)
        result.policies.append(PolicyPatch(policy.metadata.namespace, policy.metadata.name,
                                           {"burst": verdict.state.to_status(), "conditions": conditions},
                                           [event]))
    return result
