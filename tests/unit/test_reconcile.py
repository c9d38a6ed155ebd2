"""Reconcile decisions as tables: child actions and drift, health from KubeRay status, typed status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiered_operator.api import conditions as c
from tiered_operator.api.status import (
    PolicyStatus,
    TierStatus,
    WantedCondition,
    find,
    parse_status,
    set_conditions,
    status_patch,
    timestamp,
)
from tiered_operator.core.reconcile import (
    AutoscaleRecord,
    ChildAction,
    Unservable,
    child_action,
    child_events,
    desired_tier,
    failed_status,
    parse_policy,
    policy_status,
    rayservice_health,
    status_events,
    tier_status,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def example(name: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"].update(namespace="default", uid="uid-1", generation=1)
    return body


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return patch
    for key, value in patch.items():
        target[key] = _merge(target.get(key), value)
    return target


def reconcile(body: dict[str, Any], actual: dict[str, Any] | None, now: datetime = NOW,
              record: AutoscaleRecord | None = None) -> tuple[ChildAction, dict[str, Any], dict[str, Any] | None]:
    """One pass as the controller makes it: (action, status patch, the child after the action)."""
    desired = desired_tier(body, record.replicas if record else None)
    action = child_action(desired.child, actual)
    if action.kind == "create":
        actual = copy.deepcopy(desired.child.manifest)
    elif action.kind != "none":
        actual = _merge(copy.deepcopy(actual), copy.deepcopy(action.patch))
    existing = parse_status(TierStatus, body.get("status"))
    patch = status_patch(body.get("status"), tier_status(desired, action, actual, existing, record, now))
    body["status"] = {**(body.get("status") or {}), **patch}
    return action, patch, actual


def test_create_then_nothing_to_do() -> None:
    body = example("tier-awq-h100.yaml")
    action, patch, actual = reconcile(body, None)
    assert action.kind == "create" and actual is not None and actual["kind"] == "RayService"
    assert patch["replicas"] == {"desired": 2, "ready": 0}
    action, patch, _ = reconcile(body, actual, NOW + timedelta(minutes=5))
    assert (action.kind, patch) == ("none", {})


def test_replica_and_model_changes() -> None:
    body = example("tier-awq-h100.yaml")
    _, _, actual = reconcile(body, None)

    body["spec"]["replicas"]["min"] = 5
    action, _, actual = reconcile(body, actual)
    assert action.kind == "rescale"
    assert set(action.patch["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    assert "num_replicas: 5" in action.patch["spec"]["serveConfigV2"]

    body["spec"]["model"]["maxModelLen"] = 4096
    desired = desired_tier(body, None)
    action = child_action(desired.child, actual)
    assert (action.kind, action.why) == ("update", "spec changed")
    assert "max_model_len: 4096" in action.patch["spec"]["serveConfigV2"]
    assert [e.reason for e in child_events(desired, action, autoscaled=True)] == ["RayServiceUpdated"]


def test_autoscaler_choice_is_clamped_and_ignored_when_autoscaling_is_off() -> None:
    record = AutoscaleRecord(replicas=20, conditions=())
    _, _, actual = reconcile(example("tier-awq-h100.yaml"), None, record=record)  # min 2, max 8, autoscaled
    assert "num_replicas: 8" in actual["spec"]["serveConfigV2"]

    edge = example("tier-llamacpp-cpu.yaml")  # autoscaling off, min 1
    edge["spec"]["replicas"]["desired"] = 3
    _, _, actual = reconcile(edge, None, record=AutoscaleRecord(replicas=4, conditions=()))
    assert actual["spec"]["serveConfigV2"].count("num_replicas: 3") == 1


@pytest.mark.parametrize(
    ("mutation", "reason", "fragment"),
    [
        ({"accelerator": {"type": "H100", "gpusPerReplica": "1"}, "model": {
            "id": "m", "source": "hf://o/m", "parameters": "70B", "bits": 16}}, c.DOES_NOT_FIT, "needs ~157 GiB"),
        ({"replicas": {"min": 1, "max": "many"}}, c.INVALID_SPEC, "spec.replicas.max: Input should be a valid"),
    ],
)
def test_invalid_specs_report_once(mutation: dict, reason: str, fragment: str) -> None:
    body = example("tier-awq-h100.yaml")
    body["spec"].update(mutation)
    with pytest.raises(Unservable) as raised:
        desired_tier(body, None)
    assert raised.value.reason == reason and fragment in str(raised.value)
    status = failed_status(TierStatus(), 1, reason, str(raised.value), NOW, invalid=True)
    invalid = find(status.conditions, c.INVALID)
    assert invalid is not None and (invalid.status, invalid.reason) == ("True", reason)
    assert [(e.type, e.reason) for e in status_events((), status.conditions)] == [("Warning", reason)]
    # The same invalid spec again: no new status, no new Event.
    raw = status_patch(None, status)
    again = failed_status(parse_status(TierStatus, raw), 1, reason, str(raised.value), NOW + timedelta(seconds=30),
                          invalid=True)
    assert status_patch(raw, again) == {} and status_events(status.conditions, again.conditions) == []


def _rayservice(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {}, "spec": {}, "status": status}


@pytest.mark.parametrize(
    ("status", "ready", "degraded"),
    [
        ({}, False, False),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, True, False),
        ({"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]}, False, False),
        ({"serviceStatus": "Running"}, True, False),
        ({"activeServiceStatus": {"applicationStatuses": {"llm": {"status": "RUNNING"}}}}, True, False),
        ({"activeServiceStatus": {"applicationStatuses": {"llm": {"status": "DEPLOYING"}}}}, False, False),
        ({"conditions": [{"type": "Ready", "status": "True"}],
          "activeServiceStatus": {"applicationStatuses": {"llm": {"status": "UNHEALTHY", "message": "oom"}}}},
         False, True),
    ],
)
def test_health_from_kuberay_status(status: dict, ready: bool, degraded: bool) -> None:
    health = rayservice_health(_rayservice(status))
    assert (health.ready, health.degraded) == (ready, degraded)


def test_child_action_repairs_drift_anywhere_but_ignores_server_defaults() -> None:
    body = example("tier-awq-h100.yaml")
    desired = desired_tier(body, None)
    actual = copy.deepcopy(desired.child.manifest)
    assert child_action(desired.child, None) == ChildAction("create")
    assert child_action(desired.child, actual).kind == "none"

    defaulted = copy.deepcopy(actual)  # what a server adds is not drift
    defaulted["spec"]["upgradeStrategy"] = {"type": "NewCluster"}
    defaulted["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = 0  # CRD default; ours is unset
    defaulted["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "imagePullPolicy"] = "IfNotPresent"
    defaulted["metadata"]["resourceVersion"] = "7"
    assert child_action(desired.child, defaulted).kind == "none"

    stale = copy.deepcopy(actual)
    stale["metadata"]["annotations"]["tiered.dev/spec-hash"] = "b"
    assert child_action(desired.child, stale).kind == "update"

    edited = copy.deepcopy(actual)  # a hand edit of the head image, hash untouched
    edited["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    action = child_action(desired.child, edited)
    assert (action.kind, action.why) == ("update", "edited outside the operator")
    assert action.patch["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"] == desired.child.manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]

    unlabelled = copy.deepcopy(actual)
    del unlabelled["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert child_action(desired.child, unlabelled).kind == "update"

    rescaled = desired_tier(body, 6).child
    assert child_action(rescaled, actual).kind == "rescale"


def test_condition_transition_time_moves_only_on_flips() -> None:
    first = set_conditions((), [WantedCondition(type="Ready", status="False", reason="A")], now=NOW, generation=1)
    later = NOW + timedelta(minutes=1)
    same = set_conditions(first, [WantedCondition(type="Ready", status="False", reason="B", message="m")],
                          now=later, generation=2)
    assert same[0].last_transition_time == first[0].last_transition_time
    assert (same[0].reason, same[0].observed_generation) == ("B", 2)
    flipped = set_conditions(same, [WantedCondition(type="Ready", status="True", reason="C")], now=later,
                             generation=2)
    assert flipped[0].last_transition_time == timestamp(later)


def test_status_patch_writes_changed_keys_whole_and_leaves_others() -> None:
    body = example("tier-awq-h100.yaml")
    _, patch, _ = reconcile(body, None)
    raw = {**patch, "kopf": {"progress": {}}}  # kopf's own key is not ours to touch
    status = parse_status(TierStatus, raw)
    assert status_patch(raw, status) == {}
    scaled = status.model_copy(update={"utilization": 91.5})
    assert status_patch(raw, scaled) == {"utilization": 91.5}
    hand_edited = {**raw, "replicas": {"desired": "lots"}}  # unreadable parts count as absent
    assert parse_status(TierStatus, hand_edited).replicas is None


def test_policy_status_tracks_referenced_tiers() -> None:
    policy = parse_policy(example("policy-frontier.yaml"))
    ready = parse_status(TierStatus, {"conditions": [{"type": "Ready", "status": "True", "reason": "R"}],
                                      "endpoint": "http://x/v1"})
    waiting = parse_status(TierStatus, {"conditions": [{"type": "Ready", "status": "False", "reason": "W"}]})

    def ready_condition(tiers: dict[str, TierStatus]) -> Any:
        return find(policy_status(policy, tiers, PolicyStatus(), None, NOW).conditions, c.READY)

    condition = ready_condition({"triage": ready, "extract": waiting})
    assert (condition.reason, condition.message) == (c.TIERS_MISSING, "InferenceTier not found: edge")
    assert ready_condition({"triage": ready, "extract": waiting, "edge": ready}).reason == c.TIERS_NOT_READY
    status = policy_status(policy, {"triage": ready, "extract": ready, "edge": ready}, PolicyStatus(), None, NOW)
    assert find(status.conditions, c.READY).status == "True"
    patch = status_patch(None, status)
    assert patch["tiers"][0] == {"name": "triage", "kind": "local", "tierRef": "triage",
                                 "endpoint": "http://x/v1", "ready": True}
    assert patch["burst"] == {"active": False}
