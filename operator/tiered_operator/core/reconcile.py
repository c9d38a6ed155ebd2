"""Level-based reconciliation of InferenceTiers (and the status of RoutingPolicies).

`reconcile_tier` serves create, update, resume and the periodic timer alike:
parse → plan → render desired → compare with the actual child → apply only the difference → status.
The decisions (`child_action`, `rayservice_health`, `tier_status`, `policy_status`) are pure functions;
`reconcile_tier` only does the child write. Status changes are returned as a patch that holds only the
keys that differ, so a reconcile with nothing to do makes no API write at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from tiered_operator.api import conditions as c
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import InvalidObject, parse_spec
from tiered_operator.core.plan import CapacityPlan, PlanError, plan_capacity
from tiered_operator.core.render import (
    SPEC_HASH_ANNOTATION,
    TIER_LABEL,
    desired_replicas,
    endpoint,
    render_rayservice,
    replica_fields,
)

RAYSERVICES = "rayservices"
HEALTHY_APP_STATES = {"RUNNING"}
FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}


class ChildWriter(Protocol):
    async def create(self, plural: str, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def patch(
        self, plural: str, api_version: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ChildAction:
    kind: Literal["create", "update", "rescale", "none"]
    patch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Outcome:
    """What a reconcile decided: the status patch (changed keys only) and the Events to post."""

    status_patch: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    action: str = "none"


def child_action(desired: Mapping[str, Any], actual: Mapping[str, Any] | None) -> ChildAction:
    """How to move the actual RayService to the desired one, by spec hash first, replica counts second."""
    if actual is None:
        return ChildAction("create")
    actual_hash = (actual.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if actual_hash != desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
        # A merge patch's null deletes: carry only the metadata the render set.
        metadata = {key: desired["metadata"][key] for key in ("labels", "annotations", "ownerReferences")
                    if key in desired["metadata"]}
        return ChildAction("update", {"metadata": metadata, "spec": desired["spec"]})
    if replica_fields(actual) != replica_fields(desired):
        return ChildAction(
            "rescale",
            {
                "spec": {
                    "serveConfigV2": desired["spec"]["serveConfigV2"],
                    "rayClusterConfig": {
                        "workerGroupSpecs": desired["spec"]["rayClusterConfig"]["workerGroupSpecs"]
                    },
                }
            },
        )
    return ChildAction("none")


@dataclass(frozen=True)
class Health:
    ready: bool
    degraded: bool
    message: str


def rayservice_health(actual: Mapping[str, Any] | None) -> Health:
    """Readiness and degradation as KubeRay reports them in the RayService status."""
    if actual is None:
        return Health(False, False, "RayService not created yet")
    status = actual.get("status") or {}
    ready_condition = c.find(status.get("conditions"), "Ready")
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    failed = {
        name: app for name, app in apps.items() if (app or {}).get("status") in FAILED_APP_STATES
    }
    if failed:
        detail = "; ".join(
            f"application {name} is {app.get('status')}: {app.get('message', '')}".rstrip(": ")
            for name, app in sorted(failed.items())
        )
        return Health(False, True, detail)
    if ready_condition is not None:
        ready = ready_condition.get("status") == "True"
        message = str(ready_condition.get("message") or ready_condition.get("reason") or "")
        return Health(ready, False, message or ("serving" if ready else "not ready"))
    if status.get("serviceStatus") == "Running":
        return Health(True, False, "serving")
    apps_ready = bool(apps) and all((app or {}).get("status") in HEALTHY_APP_STATES for app in apps.values())
    return Health(apps_ready, False, "serving" if apps_ready else "waiting for KubeRay to report readiness")


def _changed(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in wanted.items() if existing.get(key) != value}


def _events(before: Any, after: list[dict[str, Any]]) -> list[Event]:
    """Events for the flips a person wants to hear of: the spec became invalid, readiness was gained or
    lost (not the first "not ready yet" of a new object), the application degraded."""
    events = []
    if (invalid := c.flipped(before, after, c.INVALID)) and invalid["status"] == "True":
        events.append(Event("Warning", str(invalid["reason"]), str(invalid["message"])))
    if (ready := c.flipped(before, after, c.READY)) and invalid is None:
        kind: Literal["Normal", "Warning"] = "Normal" if ready["status"] == "True" else "Warning"
        if ready["status"] == "True" or c.find(before, c.READY) is not None:
            events.append(Event(kind, str(ready["reason"]), str(ready["message"])))
    if (degraded := c.flipped(before, after, c.DEGRADED)) and degraded["status"] == "True":
        events.append(Event("Warning", str(degraded["reason"]), str(degraded["message"])))
    return events


def invalid_status(
    body: Mapping[str, Any], reason: str, message: str, now: datetime
) -> Outcome:
    """Status for a spec that cannot be served: Invalid=True, not Ready, and nothing else touched."""
    status = body.get("status") or {}
    generation = int(body.get("metadata", {}).get("generation") or 0)
    conditions = c.merge_conditions(
        status.get("conditions"),
        [
            c.Condition(type=c.INVALID, status="True", reason=reason, message=message),
            c.Condition(type=c.READY, status="False", reason=reason, message=message),
            c.Condition(type=c.PROGRESSING, status="False", reason=reason, message="fix the spec"),
        ],
        now=now,
        generation=generation,
    )
    wanted = {"observedGeneration": generation, "conditions": conditions}
    return Outcome(_changed(status, wanted), _events(status.get("conditions"), conditions))


def tier_status(
    tier: InferenceTier,
    plan: CapacityPlan,
    replicas: int,
    action: ChildAction,
    actual: Mapping[str, Any] | None,
    existing: Mapping[str, Any],
    now: datetime,
) -> Outcome:
    """The status a valid tier should have after `action` on its child."""
    health = rayservice_health(actual)
    changing = action.kind != "none"
    if health.ready and not changing:
        progressing = c.Condition(type=c.PROGRESSING, status="False", reason=c.RECONCILED, message="")
    else:
        # While KubeRay works, keep saying what started it (Creating, Updating…): no write per pass.
        previous = c.find(existing.get("conditions"), c.PROGRESSING) or {}
        ongoing = previous.get("reason") if previous.get("status") == "True" else None
        reason = {"create": c.CREATING, "update": c.UPDATING, "rescale": c.RESCALING}.get(
            action.kind, str(ongoing or c.WAITING_FOR_RAYSERVICE)
        )
        progressing = c.Condition(type=c.PROGRESSING, status="True", reason=reason, message=health.message)
    ready = c.Condition(
        type=c.READY,
        status="True" if health.ready else "False",
        reason=c.RAYSERVICE_READY if health.ready else c.WAITING_FOR_RAYSERVICE,
        message=health.message,
    )
    degraded = c.Condition(
        type=c.DEGRADED,
        status="True" if health.degraded else "False",
        reason=c.APPLICATION_UNHEALTHY if health.degraded else c.HEALTHY,
        message=health.message if health.degraded else "",
    )
    valid = c.Condition(type=c.INVALID, status="False", reason=c.VALID, message="")
    generation = tier.metadata.generation
    conditions = c.merge_conditions(
        existing.get("conditions"), [valid, ready, progressing, degraded], now=now, generation=generation
    )
    actual_replicas = replica_fields(actual)["numReplicas"] if actual else []
    ready_replicas = actual_replicas[0] if health.ready and actual_replicas else 0
    wanted: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "replicas": {**(existing.get("replicas") or {}), "desired": replicas, "ready": ready_replicas},
        "plan": {
            "weightsGiB": plan.weights_gib,
            "kvCacheGiB": plan.kv_cache_gib,
            "replicaGiB": plan.replica_gib,
            "replicasPerGpu": plan.replicas_per_gpu,
            "gpusPerReplica": plan.gpus_per_replica,
            "tensorParallelSize": plan.tensor_parallel_size,
            "gpus": plan.worker_gpus(replicas),
        },
        "endpoint": endpoint(tier.metadata.name, tier.metadata.namespace),
        "rayService": tier.metadata.name,
        "selector": f"{TIER_LABEL}={tier.metadata.name}",
    }
    events = _events(existing.get("conditions"), conditions)
    if action.kind != "none":
        verb = {"create": "Created", "update": "Updated", "rescale": "Rescaled"}[action.kind]
        events.insert(0, Event("Normal", f"RayService{verb}", f"{verb} RayService {tier.metadata.name}: "
                               f"replicas {replicas}, GPUs {plan.worker_gpus(replicas)}"))
    return Outcome(_changed(existing, wanted), events, action.kind)


async def reconcile_tier(
    body: Mapping[str, Any],
    actual: Mapping[str, Any] | None,
    writer: ChildWriter,
    now: datetime,
    autoscaled_replicas: int | None = None,
) -> Outcome:
    """Bring one tier's RayService to its spec; return the status patch and Events to post.

    `actual` is the RayService as last seen (from the operator's in-memory index), or None.
    `autoscaled_replicas` is the autoscaler's choice, honoured only when autoscaling is on.
    """
    existing = body.get("status") or {}
    try:
        parsed = parse_spec(body)
        assert isinstance(parsed, InferenceTier)
        plan = plan_capacity(parsed.spec)
    except InvalidObject as error:
        return invalid_status(body, c.INVALID_SPEC, "; ".join(error.problems), now)
    except PlanError as error:
        return invalid_status(body, c.DOES_NOT_FIT, str(error), now)

    if autoscaled_replicas is None:
        autoscaled_replicas = (existing.get("replicas") or {}).get("desired")
    replicas = desired_replicas(parsed.spec, autoscaled_replicas)
    desired = render_rayservice(parsed, plan, replicas)
    action = child_action(desired, actual)
    meta = desired["metadata"]
    if action.kind == "create":
        actual = await writer.create(RAYSERVICES, desired)
        if actual is None:  # it exists already: the next pass compares it
            action = ChildAction("none")
    elif action.kind != "none":
        actual = await writer.patch(
            RAYSERVICES, desired["apiVersion"], meta["namespace"], meta["name"], action.patch
        )
    return tier_status(parsed, plan, replicas, action, actual, existing, now)


def policy_status(
    body: Mapping[str, Any], tiers: Mapping[str, Mapping[str, Any]], now: datetime
) -> Outcome:
    """Status of a RoutingPolicy from the InferenceTiers it references (`tiers`: name → status)."""
    existing = body.get("status") or {}
    try:
        parsed = parse_spec(body)
        assert isinstance(parsed, RoutingPolicy)
    except InvalidObject as error:
        return invalid_status(body, c.INVALID_SPEC, "; ".join(error.problems), now)
    spec = parsed.spec
    entries = []
    missing, not_ready = [], []
    for tier in spec.tiers:
        if tier.external is not None:
            entries.append({"name": tier.name, "kind": "external", "endpoint": tier.external.base_url,
                            "ready": True})
            continue
        status = tiers.get(tier.tier_ref or "")
        if status is None:
            missing.append(tier.tier_ref)
            entries.append({"name": tier.name, "kind": "local", "tierRef": tier.tier_ref, "ready": False})
            continue
        ready = (c.find(status.get("conditions"), c.READY) or {}).get("status") == "True"
        if not ready:
            not_ready.append(tier.tier_ref)
        entries.append({"name": tier.name, "kind": "local", "tierRef": tier.tier_ref,
                        "endpoint": status.get("endpoint"), "ready": ready})
    if missing:
        ready = c.Condition(type=c.READY, status="False", reason=c.TIERS_MISSING,
                            message="InferenceTier not found: " + ", ".join(sorted(map(str, missing))))
    elif not_ready:
        ready = c.Condition(type=c.READY, status="False", reason=c.TIERS_NOT_READY,
                            message="InferenceTier not ready: " + ", ".join(sorted(map(str, not_ready))))
    else:
        ready = c.Condition(type=c.READY, status="True", reason=c.TIERS_READY, message="all tiers ready")
    valid = c.Condition(type=c.INVALID, status="False", reason=c.VALID, message="")
    generation = parsed.metadata.generation
    conditions = c.merge_conditions(existing.get("conditions"), [valid, ready], now=now, generation=generation)
    wanted = {"observedGeneration": generation, "conditions": conditions, "tiers": entries}
    if "burst" not in existing:
        wanted["burst"] = {"active": False}
    return Outcome(_changed(existing, wanted), _events(existing.get("conditions"), conditions))
