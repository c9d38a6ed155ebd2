"""The autoscale loop: read each due tier's signal, decide (`core.autoscale.decide_tick`), record, queue.

Every `tick_seconds` the loop looks for autoscaled tiers whose `autoscaling.intervalSeconds` has passed,
reads their signal from Prometheus (off the event loop, a few at a time), and records the decision in the
controller: the replicas and the MetricsAvailable/Scaling conditions for the tier, the burst verdict for
every policy that bursts from it. It then queues those objects; their reconcile writes child and status.
This loop never writes status itself. Metrics missing → hold replicas and burst, say so in
`MetricsAvailable`, and retry with exponential backoff (capped).

State between ticks (recommendation windows, burst evidence) lives in memory; a restarted operator starts
the windows afresh (replicas come back from status, the burst flag from the policy's status), which can
only delay a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from tiered_operator.api import conditions as c
from tiered_operator.api.model import Burst, InferenceTier, RoutingPolicy
from tiered_operator.api.objects import InvalidObject, parse_spec
from tiered_operator.api.status import WantedCondition
from tiered_operator.controller.reconciler import POLICIES, TIERS, Controller, TierLoop
from tiered_operator.controller.signals import MetricsUnavailable, SignalSource, signal_query
from tiered_operator.core.autoscale import autoscale_record, burst_record, decide_tick
from tiered_operator.core.burst import BurstState
from tiered_operator.core.reconcile import Event
from tiered_operator.core.render import desired_replicas
from tiered_operator.core.scaling import Sample

log = logging.getLogger("tiered.autoscaler")

MAX_BACKOFF_SECONDS = 300.0
NO_PROMETHEUS = "NoPrometheus"
CONCURRENT_READS = 8
NEW_TIER_DELAY_SECONDS = 0.5


async def autoscale_loop(controller: Controller, source: SignalSource | None, tick_seconds: float) -> None:
    """Runs until cancelled."""
    while True:
        await controller.leading.wait()
        controller.tiers_added.clear()
        await autoscale_once(controller, source)
        # A new tier gets its first tick (and its MetricsAvailable) within a moment, not up to a tick later;
        # a burst of new tiers is taken in one pass.
        await asyncio.sleep(min(NEW_TIER_DELAY_SECONDS, tick_seconds))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(controller.tiers_added.wait(), max(0.0, tick_seconds - NEW_TIER_DELAY_SECONDS))


async def autoscale_once(controller: Controller, source: SignalSource | None) -> None:
    """Tick every due tier once."""
    now = controller.clock()
    reads = asyncio.Semaphore(CONCURRENT_READS)

    async def one(body: dict[str, Any]) -> None:
        async with reads:
            try:
                await tick_tier(controller, source, body, now)
            except Exception:  # one tier's failure must not stop the others' scaling
                log.exception("autoscale tick failed for %s/%s", body["metadata"]["namespace"],
                              body["metadata"]["name"])

    await asyncio.gather(*(one(body) for body in controller.of_kind(TIERS)
                           if not body["metadata"].get("deletionTimestamp")))


def _bursting_policies(controller: Controller, tier: InferenceTier) -> dict[str, tuple[RoutingPolicy, Burst]]:
    """The policies of the tier's namespace whose burst starts from this tier, by name."""
    found = {}
    for body in controller.of_kind(POLICIES, tier.metadata.namespace):
        try:
            policy = parse_spec(body)
        except InvalidObject:
            continue
        assert isinstance(policy, RoutingPolicy)
        burst = policy.spec.burst
        if burst is not None and policy.spec.tier(burst.from_).tier_ref == tier.metadata.name:
            found[policy.metadata.name] = (policy, burst)
    return found


async def _read(source: SignalSource | None, tier: InferenceTier, current: int, now: float
                ) -> tuple[Sample | None, WantedCondition]:
    if source is None:
        return None, WantedCondition(type=c.METRICS_AVAILABLE, status="False", reason=NO_PROMETHEUS,
                                     message="no Prometheus configured (TIERED_PROMETHEUS_URL): replicas held")
    query = signal_query(tier.spec.autoscaling, tier.metadata.namespace, tier.metadata.name, tier.spec.engine)
    try:
        sample = await asyncio.to_thread(source.read, query, now)
    except MetricsUnavailable as error:
        return None, WantedCondition(type=c.METRICS_AVAILABLE, status="False", reason=error.reason,
                                     message=f"{error}; holding {current} replicas and burst state")
    signal = "the custom query" if tier.spec.autoscaling.query else tier.spec.autoscaling.metric
    return sample, WantedCondition(type=c.METRICS_AVAILABLE, status="True", reason="SignalRead",
                                   message=f"reading {signal} from Prometheus")


async def tick_tier(controller: Controller, source: SignalSource | None, body: Mapping[str, Any],
                    now: float) -> None:
    """One tick of one tier, if it is due."""
    known = controller.loops.get(body["metadata"].get("uid", ""))
    if known is not None and now < known.next_tick:
        return  # not due: not even parsed
    try:
        tier = parse_spec(body)
    except InvalidObject:
        return  # its reconcile reports it
    assert isinstance(tier, InferenceTier)
    spec, meta = tier.spec, tier.metadata
    if not spec.autoscaling.enabled:
        if (loop := controller.loops.pop(meta.uid, None)) is not None and loop.record is not None:
            controller.enqueue((TIERS, meta.namespace, meta.name))
        return
    loop = controller.loops.setdefault(meta.uid, TierLoop())
    if now < loop.next_tick:
        return
    recorded = loop.record.replicas if loop.record is not None else \
        ((body.get("status") or {}).get("replicas") or {}).get("desired")
    current = desired_replicas(spec, recorded)
    sample, metrics = await _read(source, tier, current, now)
    # Healthy: tick every interval. Failing: back off exponentially, capped.
    loop.failures = 0 if sample is not None else loop.failures + 1
    interval = spec.autoscaling.interval_seconds
    delay = interval * (2 ** min(loop.failures - 1, 8) if loop.failures else 1)
    loop.next_tick = now + min(delay, max(MAX_BACKOFF_SECONDS, interval))

    policies = _bursting_policies(controller, tier)
    states = {}
    for name, (policy, burst) in policies.items():
        held = controller.bursts.get((meta.namespace, name))
        state = held[0] if held else BurstState.from_status(_status(controller, policy).get("burst"))
        states[name] = (burst, state)
    decision = decide_tick(sample, loop.scaling, current, spec, states, now)
    loop.scaling = decision.scaling.state
    record = autoscale_record(decision.scaling, metrics)
    if record != loop.record:
        loop.record = record
        controller.enqueue((TIERS, meta.namespace, meta.name))
    if decision.scaling.changed:
        controller.metrics.scale_decisions.labels(decision.scaling.reason).inc()
        await controller.post_event(body, Event("Normal", decision.scaling.reason, decision.scaling.message))
    for name, verdict in decision.bursts.items():
        held = controller.bursts.get((meta.namespace, name))
        controller.bursts[(meta.namespace, name)] = (
            verdict.state, burst_record(verdict) if verdict.changed else held[1] if held else None)
        if verdict.changed:
            controller.metrics.burst_decisions.labels(verdict.reason).inc()
            controller.enqueue((POLICIES, meta.namespace, name))


def _status(controller: Controller, policy: RoutingPolicy) -> dict[str, Any]:
    body = controller.get(POLICIES, policy.metadata.namespace, policy.metadata.name) or {}
    return dict(body.get("status") or {})
