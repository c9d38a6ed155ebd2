"""Typed status of both kinds: what the operator writes under `.status`, and the one diff that writes it.

The controller computes a whole `TierStatus` / `PolicyStatus` from its inputs (the spec, the child as last
seen, the autoscaler's recorded decision) and `status_patch` turns "existing raw status → wanted typed
status" into a JSON merge patch of the keys that changed. No other code builds status dicts, so no writer
can merge a stale copy of `conditions` over a newer one.

Pure: no I/O. Keys not owned here (kopf's own `status.kopf`) are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ConditionStatus = Literal["True", "False", "Unknown"]


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_Status):
    """A condition as stored (Kubernetes' `metav1.Condition` shape)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int = 0


class WantedCondition(BaseModel):
    """A condition a decision asks for; `set_conditions` stamps the transition time and generation."""

    model_config = ConfigDict(frozen=True)

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_conditions(
    existing: Iterable[Condition], wanted: Iterable[WantedCondition], *, now: datetime, generation: int
) -> tuple[Condition, ...]:
    """`existing` with `wanted` applied, sorted by type; `lastTransitionTime` moves only when status flips."""
    by_type = {condition.type: condition for condition in existing}
    for update in wanted:
        old = by_type.get(update.type)
        since = old.last_transition_time if old is not None and old.status == update.status else timestamp(now)
        by_type[update.type] = Condition(type=update.type, status=update.status, reason=update.reason,
                                         message=update.message, last_transition_time=since,
                                         observed_generation=generation)
    return tuple(sorted(by_type.values(), key=lambda condition: condition.type))


def find(conditions: Iterable[Condition], condition_type: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == condition_type), None)


def is_true(conditions: Iterable[Condition], condition_type: str) -> bool:
    found = find(conditions, condition_type)
    return found is not None and found.status == "True"


class TierReplicas(_Status):
    desired: int | None = None
    ready: int | None = None


class TierPlan(_Status):
    weights_gi_b: float = Field(alias="weightsGiB")
    kv_cache_gi_b: float = Field(alias="kvCacheGiB")
    replica_gi_b: float = Field(alias="replicaGiB")
    replicas_per_gpu: int
    gpus_per_replica: float
    tensor_parallel_size: int
    gpus: float


class TierStatus(_Status):
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    replicas: TierReplicas | None = None
    plan: TierPlan | None = None
    utilization: float | None = None
    last_scale_time: str | None = None
    endpoint: str | None = None
    ray_service: str | None = None
    selector: str | None = None


class PolicyTierStatus(_Status):
    name: str
    kind: Literal["local", "external"]
    tier_ref: str | None = None
    endpoint: str | None = None
    ready: bool = False


class BurstStatus(_Status):
    active: bool = False
    since: str | None = None
    reason: str | None = None


class PolicyStatus(_Status):
    observed_generation: int | None = None
    conditions: tuple[Condition, ...] = ()
    tiers: tuple[PolicyTierStatus, ...] | None = None
    burst: BurstStatus | None = None
    endpoint: str | None = None


S = TypeVar("S", bound=_Status)


def parse_status(model: type[S], raw: Mapping[str, Any] | None) -> S:
    """The typed status of an object as read back; unreadable parts (hand edits) count as absent."""
    raw = dict(raw or {})
    try:
        return model.model_validate(raw)
    except ValueError:
        keep = {}
        for key, value in raw.items():
            try:
                model.model_validate({key: value})
            except ValueError:
                continue
            keep[key] = value
        return model.model_validate(keep)


def status_patch(existing: Mapping[str, Any] | None, wanted: TierStatus | PolicyStatus) -> dict[str, Any]:
    """A merge patch taking the raw `existing` status to `wanted`: changed top-level keys only.

    Keys `wanted` leaves unset (None) are left alone; lists are written whole (a merge patch replaces
    lists), so `conditions` always goes out complete and computed from the same inputs.
    """
    existing = existing or {}
    rendered = wanted.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {key: value for key, value in rendered.items() if existing.get(key) != value}
