"""Pure reconcile decisions for InferenceTiers and RoutingPolicies.

The controller gathers inputs (the object, its child as last seen, the autoscaler's recorded decision) and
asks these functions what the child and the status should be: `desired_tier` (parse → plan → render),
`child_action` (the whole rendered child against the actual one, after server defaults), `tier_status` /
`policy_status` (a whole typed status), `status_events` (the Events a status change deserves).
Nothing here writes; `controller.reconciler` applies the answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tiered_operator.api import conditions as c
from tiered_operator.api.model import InferenceTier, RoutingPolicy
from tiered_operator.api.objects import InvalidObject, parse_spec
from tiered_operator.api.status import (
    BurstStatus,
    Condition,
    PolicyStatus,
    PolicyTierStatus,
    TierPlan,
    TierReplicas,
    TierStatus,
    WantedCondition,
    find,
    is_true,
    set_conditions,
)
from tiered_operator.core.plan import CapacityPlan, PlanError, plan_capacity
from tiered_operator.core.render import (
    SPEC_HASH_ANNOTATION,
    TIER_LABEL,
    RenderedRayService,
    desired_replicas,
    endpoint,
    render_tier,
    replica_fields,
    without_replica_counts,
)
from tiered_operator.core.router_objects import RenderedObject

HEALTHY_APP_STATES = {"RUNNING"}
FAILED_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}
CHILD_METADATA = ("labels", "annotations", "ownerReferences")


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ChildAction:
    kind: Literal["create", "update", "rescale", "none"]
    patch: dict[str, Any] = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class DesiredTier:
    tier: InferenceTier
    plan: CapacityPlan
    replicas: int
    child: RenderedRayService


class Unservable(ValueError):
    """An object cannot be served as written (retrying cannot help); `reason` is the Invalid condition's."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def desired_tier(body: Mapping[str, Any], autoscaled_replicas: int | None) -> DesiredTier:
    """Parse, plan and render a tier. Raises Unservable.

    `autoscaled_replicas` is the autoscaler's recorded choice (honoured only when autoscaling is on);
    without one, the replicas last written to status hold, so a restart does not reset a scaled tier.
    """
    try:
        tier = parse_spec(body)
        assert isinstance(tier, InferenceTier)
        plan = plan_capacity(tier.spec)
    except InvalidObject as error:
        raise Unservable(c.INVALID_SPEC, "; ".join(error.problems)) from None
    except PlanError as error:
        raise Unservable(c.DOES_NOT_FIT, str(error)) from None
    if autoscaled_replicas is None:
        autoscaled_replicas = ((body.get("status") or {}).get("replicas") or {}).get("desired")
    replicas = desired_replicas(tier.spec, autoscaled_replicas)
    return DesiredTier(tier, plan, replicas, render_tier(tier, plan, replicas))


def contains(actual: Any, desired: Any) -> bool:
    """Whether `actual` holds everything `desired` sets: extra keys (server defaults) are fine, lists must
    match item by item."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            contains(a, d) for a, d in zip(actual, desired, strict=True))
    return bool(actual == desired)


def _update_if_drifted(
    manifest: Mapping[str, Any], spec_hash: str, actual: Mapping[str, Any],
    comparable: tuple[Any, Any] | None = None,
) -> ChildAction | None:
    """An update to `manifest` when `actual` carries another spec hash, or drifted from it: its metadata, or
    `comparable` (the actual and desired views to compare; by default the server's copy against what an update
    writes, where fields the server added are not drift). None when neither."""
    metadata = {key: manifest["metadata"][key] for key in CHILD_METADATA if key in manifest["metadata"]}
    content = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind", "metadata")}
    update = {"metadata": metadata, **content}  # a merge patch's null deletes: no None here
    actual_hash = ((actual.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if actual_hash != spec_hash:
        return ChildAction("update", update, "spec changed")
    actual_view, desired_view = comparable or (actual, content)
    if not contains(actual.get("metadata") or {}, metadata) or not contains(actual_view, desired_view):
        return ChildAction("update", update, "edited outside the operator")
    return None


def child_action(desired: RenderedRayService, actual: Mapping[str, Any] | None) -> ChildAction:
    """How to move the actual RayService to the desired one.

    A spec-hash change is a spec change → update. Otherwise the whole child (replica counts blanked) is
    compared with what the server holds, so hand edits anywhere (the head image, a label) are repaired.
    Replica counts alone differing → a rescale that leaves the hash alone.
    """
    manifest = desired.manifest
    if actual is None:
        return ChildAction("create")
    drifted = _update_if_drifted(manifest, desired.spec_hash, actual,
                                 (without_replica_counts(actual), desired.comparable))
    if drifted is not None:
        return drifted
    actual_replicas = replica_fields(actual)
    if actual_replicas != desired.replicas:
        # A rescale writes serveConfigV2 (the deployments override); worker bounds only when they changed.
        spec = manifest["spec"]
        patch: dict[str, Any] = {"serveConfigV2": spec["serveConfigV2"]}
        if actual_replicas["workerGroups"] != desired.replicas["workerGroups"]:
            patch["rayClusterConfig"] = {"workerGroupSpecs": spec["rayClusterConfig"]["workerGroupSpecs"]}
        return ChildAction("rescale", {"spec": patch})
    return ChildAction("none")


def object_action(desired: RenderedObject, actual: Mapping[str, Any] | None) -> ChildAction:
    """Create, update or leave a rendered object (a router's Deployment, ConfigMap…): by its hash, then the
    whole object against the server's copy, so a hand edit is repaired and server defaults are not drift."""
    if actual is None:
        return ChildAction("create")
    return _update_if_drifted(desired.body, desired.spec_hash, actual) or ChildAction("none")


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
    ready_condition = next((cond for cond in status.get("conditions") or () if cond.get("type") == "Ready"), None)
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    failed = {name: app for name, app in apps.items() if (app or {}).get("status") in FAILED_APP_STATES}
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


@dataclass(frozen=True)
class AutoscaleRecord:
    """The autoscaler's last decision for one tier, which the tier's reconcile writes into status."""

    replicas: int
    conditions: tuple[WantedCondition, ...]  # MetricsAvailable, Scaling
    utilization: float | None = None
    last_scale_time: str | None = None


def failed_status(
    existing: TierStatus | PolicyStatus, generation: int, reason: str, message: str, now: datetime,
    *, invalid: bool,
) -> TierStatus | PolicyStatus:
    """Status for an object that cannot be reconciled: Invalid (fix the spec) or Degraded (an error),
    not Ready; everything else left as it is."""
    wanted = [WantedCondition(type=c.READY, status="False", reason=reason, message=message),
              WantedCondition(type=c.PROGRESSING, status="False", reason=reason,
                              message="fix the spec" if invalid else "retrying")]
    wanted.append(WantedCondition(type=c.INVALID if invalid else c.DEGRADED, status="True", reason=reason,
                                  message=message))
    conditions = set_conditions(existing.conditions, wanted, now=now, generation=generation)
    return existing.model_copy(update={"observed_generation": generation, "conditions": conditions})


def tier_status(
    desired: DesiredTier,
    action: ChildAction,
    actual: Mapping[str, Any] | None,
    existing: TierStatus,
    record: AutoscaleRecord | None,
    now: datetime,
) -> TierStatus:
    """The whole status a valid tier should have after `action` on its child."""
    tier, plan, replicas = desired.tier, desired.plan, desired.replicas
    health = rayservice_health(actual)
    if health.ready and action.kind == "none":
        progressing = WantedCondition(type=c.PROGRESSING, status="False", reason=c.RECONCILED)
    else:
        # While KubeRay works, keep saying what started it (Creating, Updating…): no write per pass.
        previous = find(existing.conditions, c.PROGRESSING)
        ongoing = previous.reason if previous is not None and previous.status == "True" else None
        reason = {"create": c.CREATING, "update": c.UPDATING, "rescale": c.RESCALING}.get(
            action.kind, ongoing or c.WAITING_FOR_RAYSERVICE)
        progressing = WantedCondition(type=c.PROGRESSING, status="True", reason=reason, message=health.message)
    wanted = [
        WantedCondition(type=c.INVALID, status="False", reason=c.VALID),
        WantedCondition(type=c.READY, status="True" if health.ready else "False",
                        reason=c.RAYSERVICE_READY if health.ready else c.WAITING_FOR_RAYSERVICE,
                        message=health.message),
        progressing,
        WantedCondition(type=c.DEGRADED, status="True" if health.degraded else "False",
                        reason=c.APPLICATION_UNHEALTHY if health.degraded else c.HEALTHY,
                        message=health.message if health.degraded else ""),
        *(record.conditions if record is not None else ()),
    ]
    generation = tier.metadata.generation
    actual_replicas = replica_fields(actual)["numReplicas"] if actual else []
    updates: dict[str, Any] = {
        "observed_generation": generation,
        "conditions": set_conditions(existing.conditions, wanted, now=now, generation=generation),
        "replicas": TierReplicas(desired=replicas,
                                 ready=actual_replicas[0] if health.ready and actual_replicas else 0),
        "plan": TierPlan(weights_gi_b=plan.weights_gib, kv_cache_gi_b=plan.kv_cache_gib,
                         replica_gi_b=plan.replica_gib, replicas_per_gpu=plan.replicas_per_gpu,
                         gpus_per_replica=plan.gpus_per_replica, tensor_parallel_size=plan.tensor_parallel_size,
                         gpus=plan.worker_gpus(replicas)),
        "endpoint": endpoint(tier.metadata.name, tier.metadata.namespace),
        "ray_service": tier.metadata.name,
        "selector": f"{TIER_LABEL}={tier.metadata.name}",
    }
    if record is not None:
        if record.utilization is not None:
            updates["utilization"] = record.utilization
        if record.last_scale_time is not None:
            updates["last_scale_time"] = record.last_scale_time
    return existing.model_copy(update=updates)


def child_events(desired: DesiredTier, action: ChildAction, *, autoscaled: bool) -> list[Event]:
    """What a write to the child deserves; a rescale the autoscaler chose has its own Event already."""
    if action.kind == "none" or (action.kind == "rescale" and autoscaled):
        return []
    verb = {"create": "Created", "update": "Updated", "rescale": "Rescaled"}[action.kind]
    why = f" ({action.why})" if action.why else ""
    return [Event("Normal", f"RayService{verb}", f"{verb} RayService {desired.tier.metadata.name}{why}: "
                  f"replicas {desired.replicas}, GPUs {desired.plan.worker_gpus(desired.replicas)}")]


def status_events(before: tuple[Condition, ...], after: tuple[Condition, ...]) -> list[Event]:
    """Events for the flips a person wants to hear of: the spec became invalid, readiness was gained or lost
    (not the first "not ready yet" of a new object), something degraded, burst started or stopped."""
    def flipped(condition_type: str) -> Condition | None:
        old, new = find(before, condition_type), find(after, condition_type)
        return new if new is not None and (old is None or old.status != new.status) else None

    events = []
    invalid = flipped(c.INVALID)
    if invalid is not None and invalid.status == "True":
        events.append(Event("Warning", invalid.reason, invalid.message))
    ready = flipped(c.READY)
    if ready is not None and invalid is None and (ready.status == "True" or find(before, c.READY) is not None):
        events.append(Event("Normal" if ready.status == "True" else "Warning", ready.reason, ready.message))
    degraded = flipped(c.DEGRADED)
    if degraded is not None and degraded.status == "True":
        events.append(Event("Warning", degraded.reason, degraded.message))
    bursting = flipped(c.BURSTING)
    if bursting is not None and (bursting.status == "True" or find(before, c.BURSTING) is not None):
        events.append(Event("Warning" if bursting.status == "True" else "Normal", bursting.reason,
                            bursting.message))
    return events


@dataclass(frozen=True)
class BurstRecord:
    """The burst decision for one policy, which the policy's reconcile writes into status."""

    status: BurstStatus
    condition: WantedCondition


def parse_policy(body: Mapping[str, Any]) -> RoutingPolicy:
    """Raises Unservable."""
    try:
        policy = parse_spec(body)
    except InvalidObject as error:
        raise Unservable(c.INVALID_SPEC, "; ".join(error.problems)) from None
    assert isinstance(policy, RoutingPolicy)
    return policy


def parse_tiers(bodies: Iterable[Mapping[str, Any]]) -> dict[str, InferenceTier]:
    """The valid tiers among `bodies`, by name (an invalid tier reports itself)."""
    tiers = {}
    for body in bodies:
        try:
            tier = parse_spec(body)
        except InvalidObject:
            continue
        if isinstance(tier, InferenceTier):
            tiers[tier.metadata.name] = tier
    return tiers


def policy_status(
    policy: RoutingPolicy,
    tiers: Mapping[str, TierStatus],
    existing: PolicyStatus,
    burst: BurstRecord | None,
    now: datetime,
    endpoint: str | None = None,
) -> PolicyStatus:
    """Status of a RoutingPolicy from the InferenceTiers it references (`tiers`: name → status);
    `endpoint` is its router's in-cluster URL."""
    entries, missing, not_ready = [], [], []
    for tier in policy.spec.tiers:
        if tier.external is not None:
            entries.append(PolicyTierStatus(name=tier.name, kind="external", endpoint=tier.external.base_url,
                                            ready=True))
            continue
        status = tiers.get(tier.tier_ref or "")
        if status is None:
            missing.append(str(tier.tier_ref))
            entries.append(PolicyTierStatus(name=tier.name, kind="local", tier_ref=tier.tier_ref))
            continue
        ready = is_true(status.conditions, c.READY)
        if not ready:
            not_ready.append(str(tier.tier_ref))
        entries.append(PolicyTierStatus(name=tier.name, kind="local", tier_ref=tier.tier_ref,
                                        endpoint=status.endpoint, ready=ready))
    if missing:
        trouble = "InferenceTier not found: " + ", ".join(sorted(missing))
        ready_condition = WantedCondition(type=c.READY, status="False", reason=c.TIERS_MISSING, message=trouble)
    elif not_ready:
        trouble = "InferenceTier not ready: " + ", ".join(sorted(not_ready))
        ready_condition = WantedCondition(type=c.READY, status="False", reason=c.TIERS_NOT_READY, message=trouble)
    else:
        trouble = ""
        ready_condition = WantedCondition(type=c.READY, status="True", reason=c.TIERS_READY,
                                          message="all tiers ready")
    degraded = WantedCondition(type=c.DEGRADED, status="True" if trouble else "False",
                               reason=ready_condition.reason if trouble else c.HEALTHY, message=trouble)
    wanted = [WantedCondition(type=c.INVALID, status="False", reason=c.VALID), ready_condition, degraded]
    if burst is not None:
        wanted.append(burst.condition)
    generation = policy.metadata.generation
    return existing.model_copy(update={
        "observed_generation": generation,
        "conditions": set_conditions(existing.conditions, wanted, now=now, generation=generation),
        "tiers": tuple(entries),
        "burst": burst.status if burst is not None else existing.burst or BurstStatus(active=False),
        "endpoint": endpoint,
    })
