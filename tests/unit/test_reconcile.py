"""Reconcile decisions as tables: child actions, health from KubeRay status, status patches, conditions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiered_operator.api import conditions as c
from tiered_operator.core.reconcile import (
    ChildAction,
    child_action,
    policy_status,
    rayservice_health,
    reconcile_tier,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def example(name: str) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"].update(namespace="default", uid="uid-1", generation=1)
    return body


class RecordingWriter:
    """Stands in for the Kubernetes API in pure tests: records writes, stores what was written."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any]] = []

    async def create(self, plural: str, obj: Any) -> dict[str, Any]:
        self.writes.append(("create", copy.deepcopy(obj)))
        return dict(obj)

    async def patch(self, plural: str, api_version: str, namespace: str, name: str, patch: Any) -> dict[str, Any]:
        self.writes.append(("patch", copy.deepcopy(patch)))
        return {}


async def converge(body: dict[str, Any], actual: dict[str, Any] | None, writer: RecordingWriter,
                   **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One reconcile pass; apply its status patch to `body` and its writes to `actual`."""
    outcome = await reconcile_tier(body, actual, writer, NOW, **kwargs)
    body = {**body, "status": {**(body.get("status") or {}), **outcome.status_patch}}
    for verb, obj in writer.writes:
        actual = obj if verb == "create" else _merge(copy.deepcopy(actual), obj)
    writer.writes.clear()
    return body, actual


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return patch
    for key, value in patch.items():
        target[key] = _merge(target.get(key), value)
    return target


async def test_create_then_nothing_to_do() -> None:
    writer = RecordingWriter()
    body, actual = await converge(example("tier-awq-h100.yaml"), None, writer)
    assert actual is not None and actual["kind"] == "RayService"
    second = await reconcile_tier(body, actual, writer, NOW + timedelta(minutes=5))
    assert writer.writes == []
    assert second.status_patch == {} and second.events == [] and second.action == "none"


async def test_replica_and_model_changes() -> None:
    writer = RecordingWriter()
    body, actual = await converge(example("tier-awq-h100.yaml"), None, writer)

    body["spec"]["replicas"]["min"] = 5
    outcome = await reconcile_tier(body, actual, writer, NOW)
    assert outcome.action == "rescale"
    ((_, patch),) = writer.writes
    assert set(patch["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    assert "num_replicas: 5" in patch["spec"]["serveConfigV2"]
    writer.writes.clear()

    body["spec"]["model"]["maxModelLen"] = 4096
    outcome = await reconcile_tier(body, actual, writer, NOW)
    assert outcome.action == "update"
    assert "max_model_len: 4096" in writer.writes[0][1]["spec"]["serveConfigV2"]
    assert [e.reason for e in outcome.events] == ["RayServiceUpdated"]


async def test_autoscaler_choice_is_clamped_and_ignored_when_autoscaling_is_off() -> None:
    writer = RecordingWriter()
    body = example("tier-awq-h100.yaml")  # min 2, max 8, autoscaling on
    _, actual = await converge(body, None, writer, autoscaled_replicas=20)
    assert "num_replicas: 8" in actual["spec"]["serveConfigV2"]

    edge = example("tier-llamacpp-cpu.yaml")  # autoscaling off, min 1
    edge["spec"]["replicas"]["desired"] = 3
    _, actual = await converge(edge, None, writer, autoscaled_replicas=4)
    assert actual["spec"]["serveConfigV2"].count("num_replicas: 3") == 1


@pytest.mark.parametrize(
    ("mutation", "reason", "fragment"),
    [
        ({"accelerator": {"type": "H100", "gpusPerReplica": "1"}, "model": {
            "id": "m", "source": "hf://o/m", "parameters": "70B", "bits": 16}}, c.DOES_NOT_FIT, "needs ~157 GiB"),
        ({"replicas": {"min": 1, "max": "many"}}, c.INVALID_SPEC, "spec.replicas.max: Input should be a valid"),
    ],
)
async def test_invalid_specs_report_and_write_nothing(mutation: dict, reason: str, fragment: str) -> None:
    body = example("tier-awq-h100.yaml")
    body["spec"].update(mutation)
    writer = RecordingWriter()
    outcome = await reconcile_tier(body, None, writer, NOW)
    assert writer.writes == []
    invalid = c.find(outcome.status_patch["conditions"], c.INVALID)
    assert (invalid["status"], invalid["reason"]) == ("True", reason)
    assert fragment in invalid["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", reason)]
    # The same invalid spec again: no new status, no new Event.
    body["status"] = outcome.status_patch
    again = await reconcile_tier(body, None, writer, NOW + timedelta(seconds=30))
    assert again.status_patch == {} and again.events == []


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


def test_child_action_compares_hash_then_replicas() -> None:
    desired = {"metadata": {"annotations": {"tiered.dev/spec-hash": "a"}, "labels": {}},
               "spec": {"serveConfigV2": "applications: []\n", "rayClusterConfig": {"workerGroupSpecs": []}}}
    assert child_action(desired, None) == ChildAction("create")
    stale = copy.deepcopy(desired)
    stale["metadata"]["annotations"]["tiered.dev/spec-hash"] = "b"
    assert child_action(desired, stale).kind == "update"
    drifted_extra_field = copy.deepcopy(desired)
    drifted_extra_field["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = False  # server defaults
    assert child_action(desired, drifted_extra_field).kind == "none"


def test_condition_transition_time_moves_only_on_flips() -> None:
    first = c.merge_conditions(None, [c.Condition(type="Ready", status="False", reason="A")], now=NOW,
                               generation=1)
    later = NOW + timedelta(minutes=1)
    same = c.merge_conditions(first, [c.Condition(type="Ready", status="False", reason="B", message="m")],
                              now=later, generation=2)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("B", 2)
    flipped = c.merge_conditions(same, [c.Condition(type="Ready", status="True", reason="C")], now=later,
                                 generation=2)
    assert flipped[0]["lastTransitionTime"] == c.timestamp(later)


def test_policy_status_tracks_referenced_tiers() -> None:
    body = example("policy-frontier.yaml")
    ready = {"conditions": [{"type": "Ready", "status": "True"}], "endpoint": "http://x/v1"}
    waiting = {"conditions": [{"type": "Ready", "status": "False"}]}
    outcome = policy_status(body, {"triage": ready, "extract": waiting}, NOW)
    condition = c.find(outcome.status_patch["conditions"], c.READY)
    assert (condition["reason"], condition["message"]) == (c.TIERS_MISSING, "InferenceTier not found: edge")
    outcome = policy_status(body, {"triage": ready, "extract": waiting, "edge": ready}, NOW)
    assert c.find(outcome.status_patch["conditions"], c.READY)["reason"] == c.TIERS_NOT_READY
    outcome = policy_status(body, {"triage": ready, "extract": ready, "edge": ready}, NOW)
    assert c.find(outcome.status_patch["conditions"], c.READY)["status"] == "True"
    assert outcome.status_patch["tiers"][0] == {"name": "triage", "kind": "local", "tierRef": "triage",
                                                "endpoint": "http://x/v1", "ready": True}
    assert outcome.status_patch["burst"] == {"active": False}
