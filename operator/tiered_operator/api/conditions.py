"""Condition types and reasons, as named constants (the typed conditions themselves live in `status`)."""

from __future__ import annotations

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
CHILD_REJECTED = "ChildRejected"
RECONCILE_FAILED = "ReconcileFailed"
ROUTER_REJECTED = "RouterRejected"
