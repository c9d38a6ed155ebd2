"""kopf wiring: every decorator of the operator lives here, each delegating to `reconcile` in a line or two.

Run with `tiered operator` (or `kopf run --standalone -A -m tiered_operator.controller.handlers`).
Children are read from in-memory indexes fed by watches, so periodic reconciles cost no API reads,
and a reconcile that finds nothing to change writes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from tiered_operator.api.model import API_VERSION, GROUP, VERSION
from tiered_operator.controller.autoscale import LoopState, autoscale_tick
from tiered_operator.controller.kube import Kube
from tiered_operator.controller.metrics import PrometheusSignalSource
from tiered_operator.core.reconcile import Outcome, policy_status, reconcile_tier

TIERS = (GROUP, VERSION, "inferencetiers")
POLICIES = (GROUP, VERSION, "routingpolicies")
RAYSERVICES = ("ray.io", "v1", "rayservices")
MANAGED = {"app.kubernetes.io/managed-by": "tiered"}
# How often every object is re-reconciled even without events (readiness, drift). Seconds.
RESYNC_SECONDS = float(os.environ.get("TIERED_RESYNC_SECONDS", "30"))
# How often autoscaled tiers are checked for being due (each ticks at its autoscaling.intervalSeconds).
AUTOSCALE_TICK_SECONDS = float(os.environ.get("TIERED_AUTOSCALE_TICK_SECONDS", "5"))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in status (one write fewer per change) and post only our own Events.
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.batch_window = 0.01  # handle each event almost at once; no bursts to merge here
    memo.kube = await Kube.connect()
    prometheus = os.environ.get("TIERED_PROMETHEUS_URL")
    memo.signals = PrometheusSignalSource(prometheus) if prometheus else None
    memo.loops = LoopState()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()


@kopf.index(*RAYSERVICES, labels=MANAGED)
def rayservices(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace, name): dict(body)}


@kopf.index(*TIERS)
def tier_bodies(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace, name): dict(body)}


@kopf.index(*POLICIES)
def policy_bodies(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
    return {namespace: dict(body)}


def _apply(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _one(index: kopf.Index[tuple[str, str], Any], key: tuple[str, str]) -> Mapping[str, Any] | None:
    found = index.get(key)
    return next(iter(found), None) if found else None


@kopf.on.resume(*TIERS)
@kopf.on.create(*TIERS)
@kopf.on.update(*TIERS)
@kopf.timer(*TIERS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def tier(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, rayservices: kopf.Index[Any, Any], **_: Any
) -> None:
    actual = _one(rayservices, (body.metadata.namespace, body.metadata.name))
    _apply(await _reconcile(body, actual, memo), body, patch)


async def _reconcile(body: Mapping[str, Any], actual: Mapping[str, Any] | None, memo: kopf.Memo) -> Outcome:
    loop = memo.loops.tiers.get(body["metadata"].get("uid"))
    return await reconcile_tier(body, actual, memo.kube, datetime.now(UTC),
                                autoscaled_replicas=loop.replicas if loop else None)


@kopf.on.event(*RAYSERVICES, labels=MANAGED)
async def rayservice_changed(
    type: str, body: kopf.Body, memo: kopf.Memo, tier_bodies: kopf.Index[Any, Any], **_: Any
) -> None:
    """A child changed: KubeRay reported (readiness, health) or someone deleted it. Reconcile its tier now
    rather than at the next resync, which also recreates a deleted child."""
    deleted = type == "DELETED"
    if not deleted and not body.get("status"):
        return  # a child KubeRay has not reported on yet: nothing the tier's own reconcile did not know
    owner = next((ref["name"] for ref in body.metadata.get("ownerReferences") or []
                  if ref.get("kind") == "InferenceTier"), None)
    tier_body = _one(tier_bodies, (body.metadata.namespace, owner)) if owner else None
    if tier_body is None or tier_body["metadata"].get("deletionTimestamp"):
        return  # the owner is gone or going: garbage collection, not drift
    outcome = await _reconcile(tier_body, None if deleted else body, memo)
    if outcome.status_patch:
        await memo.kube.patch("inferencetiers", API_VERSION, body.metadata.namespace, owner,
                              {"status": outcome.status_patch}, status=True)
    for event in outcome.events:
        kopf.event(tier_body, type=event.type, reason=event.reason, message=event.message)


@kopf.on.resume(*POLICIES)
@kopf.on.create(*POLICIES)
@kopf.on.update(*POLICIES)
@kopf.timer(*POLICIES, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def policy(
    body: kopf.Body, patch: kopf.Patch, tier_bodies: kopf.Index[Any, Any], **_: Any
) -> None:
    namespace = body.metadata.namespace
    tiers = {name: tier.get("status") or {} for (ns, name), tiers in tier_bodies.items() if ns == namespace
             for tier in tiers}
    _apply(policy_status(body, tiers, datetime.now(UTC)), body, patch)


@kopf.timer(*TIERS, interval=AUTOSCALE_TICK_SECONDS, initial_delay=AUTOSCALE_TICK_SECONDS,
            when=lambda spec, **_: spec.get("autoscaling", {}).get("enabled", True))
async def autoscale(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, rayservices: kopf.Index[Any, Any],
    policy_bodies: kopf.Index[str, Any], **_: Any
) -> None:
    namespace = body.metadata.namespace
    result = await autoscale_tick(
        body, _one(rayservices, (namespace, body.metadata.name)), list(policy_bodies.get(namespace, [])),
        memo.signals, memo.loops, memo.kube, datetime.now(UTC).timestamp())
    if result is None:
        return
    _apply(result.tier, body, patch)
    for change in result.policies:
        await memo.kube.patch("routingpolicies", API_VERSION, change.namespace, change.name,
                              {"status": change.status}, status=True)
        policy = next(p for p in policy_bodies.get(namespace, []) if p["metadata"]["name"] == change.name)
        for event in change.events:
            kopf.event(policy, type=event.type, reason=event.reason, message=event.message)


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-n", "--namespace", action="append", default=None,
                        help="watch only these namespaces (repeatable); default: the whole cluster")


def operator(args: argparse.Namespace) -> int:
    """`tiered operator`: run these handlers with kopf (standalone: no peering objects needed)."""
    kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness)
    return 0
