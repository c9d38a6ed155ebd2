"""Typed status conditions: names, reasons, and merging that keeps `lastTransitionTime` stable.

Pure: no I/O. Conditions travel as plain dicts in Kubernetes' shape (type, status, reason, message,
lastTransitionTime, observedGeneration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# Types
READY = "Ready"
PROGRESSING = "Progressing"
INVALID = "Invalid"
DEGRADED = "Degraded"
METRICS_AVAILABLE = "MetricsAvailable"
SCALING = "Scaling"
BURSTING = "Bursting"

# Reasons
VALID = "Valid"
INVALID_SPEC = "InvalidSpec"
DOES_NOT_FIT = "DoesNotFit"
CREATING = "Creating"
UPDATING = "Updating"
RESCALING = "Rescaling"
WAITING_FOR_RAYSERVICE = "WaitingForRayService"
RAYSERVICE_READY = "RayServiceReady"
RECONCILED = "Reconciled"
APPLICATION_UNHEALTHY = "ApplicationUnhealthy"
HEALTHY = "Healthy"
TIERS_MISSING = "TiersMissing"
TIERS_NOT_READY = "TiersNotReady"
TIERS_READY = "TiersReady"

Status = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    status: Status
    reason: str
    message: str = ""


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    existing: Iterable[Mapping[str, Any]] | None,
    updates: Iterable[Condition],
    *,
    now: datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """Existing conditions with `updates` applied; a condition's transition time moves only on a flip.

    Conditions not mentioned in `updates` are kept as they are (another loop may own them).
    """
    by_type: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in existing or () if "type" in c}
    for update in updates:
        old = by_type.get(update.type)
        flipped = old is None or old.get("status") != update.status
        by_type[update.type] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message,
            "lastTransitionTime": timestamp(now) if flipped or old is None else old.get("lastTransitionTime"),
            "observedGeneration": generation,
        }
    return sorted(by_type.values(), key=lambda c: str(c["type"]))


def flipped(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]], condition_type: str
) -> Mapping[str, Any] | None:
    """The new condition of `condition_type` if its status changed (or it appeared), else None."""
    old = {c.get("type"): c.get("status") for c in before or ()}
    for condition in after:
        if condition.get("type") == condition_type and old.get(condition_type) != condition.get("status"):
            return condition
    return None


def find(conditions: Iterable[Mapping[str, Any]] | None, condition_type: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == condition_type), None)
