"""The real operator (`kopf run`) against the Kubernetes API emulator, driven with the real kubectl."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from bed import EmulatorProcess, OperatorProcess, eventually, running_operator
from tiered_operator.api.crd_validation import apply_defaults
from tiered_operator.cli.commands import render_documents
from tiered_operator.core.render import SPEC_HASH_ANNOTATION

ROOT = Path(__file__).resolve().parents[2]
KUBERAY_CRD = yaml.safe_load((ROOT / "devstack/tiered_devstack/data/kuberay/ray.io_rayservices.yaml").read_text())
RESYNC = 1.0  # the operator fixture's resync interval


def get(emulator: EmulatorProcess, *args: str) -> Any:
    result = emulator.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]


def num_replicas(rayservice: dict[str, Any]) -> int:
    """The replica count the operator wrote: the app's deployments override (never its args)."""
    count: int = serve_config(rayservice)["deployments"][0]["num_replicas"]
    return count


def apply_examples(emulator: EmulatorProcess) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples"))


def settled_writes(emulator: EmulatorProcess, passes: int = 3) -> int:
    """Writes the operator makes over `passes` resync intervals once it has settled."""
    emulator.reset_requests()
    time.sleep(passes * RESYNC + 0.5)
    return emulator.writes()


def test_examples_become_rayservices_with_owner_refs(emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    apply_examples(emulator)
    expected = {doc["metadata"]["name"]: doc for doc in render_documents([ROOT / "examples"])
                if doc["kind"] == "RayService"}
    assert set(expected) == {"triage", "extract", "edge"}
    for name, rendered in expected.items():
        child = eventually(lambda name=name: get(emulator, "rayservice", name), what=f"RayService {name}")
        tier = get(emulator, "itier", name)
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "name": name,
            "uid": tier["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        # As stored: the API server applies KubeRay's schema defaults (e.g. workerGroupSpecs[].priority).
        assert child["spec"] == apply_defaults(KUBERAY_CRD, rendered)["spec"]
        assert child["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == rendered["metadata"]["annotations"][
            SPEC_HASH_ANNOTATION]

    tier = eventually(lambda: (t := get(emulator, "itier", "triage")) and t.get("status", {}).get("plan") and t)
    status = tier["status"]
    assert status["plan"]["replicasPerGpu"] == 4
    assert status["endpoint"] == "http://triage-serve-svc.default.svc.cluster.local:8000/v1"
    assert status["replicas"] == {"desired": 2, "ready": 0}
    assert condition(tier, "Ready")["status"] == "False"
    assert condition(tier, "Invalid")["status"] == "False"
    assert condition(tier, "Progressing")["status"] == "True"

    table = emulator.kubectl("get", "itier").stdout
    assert "llama-3.1-8b-instruct" in table and "H100" in table, table

    # Until KubeRay reports readiness, the policy waits for its tiers (it may first see them missing).
    policy = eventually(lambda: (p := get(emulator, "rpol", "default"))
                        and condition(p, "Ready").get("reason") == "TiersNotReady" and p)
    assert condition(policy, "Ready")["status"] == "False"
    assert policy["status"]["burst"] == {"active": False}
    assert {t["name"]: t["kind"] for t in policy["status"]["tiers"]} == {
        "triage": "local", "extract": "local", "edge": "local", "frontier": "external"}


def test_changes_patch_the_child_and_a_steady_state_writes_nothing(
    emulator: EmulatorProcess, operator: OperatorProcess
) -> None:
    apply_examples(emulator)
    first = eventually(lambda: get(emulator, "rayservice", "triage"))
    first_hash = first["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    eventually(lambda: settled_writes(emulator) == 0, timeout=30, what="a settled operator")

    # A second pass with no change: zero writes, though every object is reconciled each second.
    assert settled_writes(emulator, passes=4) == 0

    # A replica change rescales in place: same spec hash and app args, new counts in the deployments override
    # and new worker bounds for the Ray autoscaler (6 replicas at 4 per H100: at least 2 workers).
    emulator.kubectl("patch", "itier", "triage", "--type=merge", "-p", '{"spec":{"replicas":{"min":6}}}')
    rescaled = eventually(lambda: (r := get(emulator, "rayservice", "triage")) and num_replicas(r) == 6 and r)
    assert rescaled["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == first_hash
    assert serve_config(rescaled)["args"] == serve_config(first)["args"]
    assert rescaled["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] == 2

    # A model change updates the child: new hash, new engine arguments.
    emulator.kubectl("patch", "itier", "triage", "--type=merge", "-p", '{"spec":{"model":{"maxModelLen":4096}}}')
    updated = eventually(lambda: (r := get(emulator, "rayservice", "triage"))
                         and r["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != first_hash and r)
    assert serve_config(updated)["args"]["llm_configs"][0]["engine_kwargs"]["max_model_len"] == 4096
    tier = eventually(lambda: (t := get(emulator, "itier", "triage"))
                      and t["status"].get("observedGeneration") == t["metadata"]["generation"] and t)
    assert tier["status"]["replicas"]["desired"] == 6
    eventually(lambda: settled_writes(emulator) == 0, timeout=30, what="settling after the changes")


def test_readiness_comes_from_the_rayservice_status(emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    apply_examples(emulator)
    for name in ("triage", "extract", "edge"):
        eventually(lambda name=name: get(emulator, "rayservice", name))
        # What KubeRay writes once Serve is up.
        emulator.kubectl("patch", "rayservice", name, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "RayServiceReady",
                                        "message": "Serve applications are running",
                                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    tier = eventually(lambda: (t := get(emulator, "itier", "triage")) and condition(t, "Ready").get("status") == "True"
                      and t, what="triage Ready")
    assert tier["status"]["replicas"] == {"desired": 2, "ready": 2}
    assert condition(tier, "Progressing")["status"] == "False"
    policy = eventually(lambda: (p := get(emulator, "rpol", "default"))
                        and condition(p, "Ready").get("status") == "True" and p, what="policy Ready")
    assert condition(policy, "Ready")["reason"] == "TiersReady"
    events = get(emulator, "events")["items"]
    assert any(e["reason"] == "RayServiceReady" and e["involvedObject"]["name"] == "triage" for e in events)

    emulator.kubectl("patch", "rayservice", "edge", "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"activeServiceStatus": {"applicationStatuses": {"llm": {
            "status": "DEPLOY_FAILED", "message": "model file not found"}}}}}))
    edge = eventually(lambda: (t := get(emulator, "itier", "edge")) and condition(t, "Degraded").get("status") == "True"
                      and t, what="edge Degraded")
    assert "model file not found" in condition(edge, "Degraded")["message"]


def test_invalid_tiers_get_a_condition_and_an_event_and_no_child(
    emulator: EmulatorProcess, operator: OperatorProcess
) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    too_big = {
        "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "metadata": {"name": "huge"},
        "spec": {"model": {"id": "llama-70b", "source": "hf://org/llama-70b", "parameters": "70B", "bits": 16},
                 "accelerator": {"type": "H100", "gpusPerReplica": "1"}},
    }
    emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(too_big))
    tier = eventually(lambda: (t := get(emulator, "itier", "huge")) and condition(t, "Invalid").get("status") == "True"
                      and t, what="Invalid=True")
    message = condition(tier, "Invalid")["message"]
    assert condition(tier, "Invalid")["reason"] == "DoesNotFit"
    assert "needs ~157 GiB per replica" in message and "set gpusPerReplica ≥ 4" in message
    assert condition(tier, "Ready")["status"] == "False"
    events = eventually(lambda: [e for e in get(emulator, "events")["items"]
                                 if e["involvedObject"]["name"] == "huge" and e["reason"] == "DoesNotFit"])
    assert events[0]["type"] == "Warning"
    assert get(emulator, "rayservice", "huge") is None
    # No retry loop: the invalid object costs nothing once reported.
    assert settled_writes(emulator, passes=3) == 0
    assert "Traceback" not in operator.output()

    # Fixing the spec clears the condition and creates the child.
    emulator.kubectl("patch", "itier", "huge", "--type=merge", "-p",
                     '{"spec":{"accelerator":{"gpusPerReplica":"4"}}}')
    eventually(lambda: get(emulator, "rayservice", "huge"), what="child after the fix")
    eventually(lambda: condition(get(emulator, "itier", "huge"), "Invalid").get("status") == "False")

    # A spec the schema forbids never reaches the operator: kubectl gets the CEL message.
    bad = {**too_big, "metadata": {"name": "bad"},
           "spec": {**too_big["spec"], "replicas": {"min": 3, "max": 1}}}
    result = emulator.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "replicas.min must be less than or equal to replicas.max" in result.stderr


def test_deleting_a_tier_removes_its_rayservice(emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    apply_examples(emulator)
    eventually(lambda: get(emulator, "rayservice", "edge"))
    emulator.kubectl("delete", "itier", "edge", "--wait=false")
    eventually(lambda: get(emulator, "itier", "edge") is None, what="tier gone")
    eventually(lambda: get(emulator, "rayservice", "edge") is None, what="RayService garbage-collected")
    assert get(emulator, "rayservice", "triage") is not None
    policy = eventually(lambda: (p := get(emulator, "rpol", "default"))
                        and condition(p, "Ready").get("reason") == "TiersMissing" and p)
    assert "edge" in condition(policy, "Ready")["message"]


def test_kubectl_scale_drives_a_tier_without_autoscaling(
    emulator: EmulatorProcess, operator: OperatorProcess
) -> None:
    apply_examples(emulator)  # edge: autoscaling off, replicas 1-4
    before = eventually(lambda: get(emulator, "rayservice", "edge"))
    emulator.kubectl("scale", "itier", "edge", "--replicas=3")
    rayservice = eventually(lambda: (r := get(emulator, "rayservice", "edge")) and num_replicas(r) == 3 and r)
    # Only the deployments override moved: the Ray autoscaler adds the worker pods.
    assert rayservice["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert serve_config(rayservice)["args"] == serve_config(before)["args"]
    tier = eventually(lambda: (t := get(emulator, "itier", "edge")) and t["status"]["replicas"]["desired"] == 3 and t)
    assert tier["spec"]["replicas"]["desired"] == 3
    result = emulator.kubectl("scale", "itier", "edge", "--replicas=9", check=False)
    assert result.returncode != 0 and "replicas.desired must lie between" in result.stderr


def test_kuberay_readiness_reaches_the_tier_without_waiting_for_a_resync(
    emulator: EmulatorProcess, tmp_path: Path
) -> None:
    with running_operator(emulator, tmp_path, resync_seconds=600):  # no resync during this test
        apply_examples(emulator)
        eventually(lambda: get(emulator, "rayservice", "edge"))
        emulator.kubectl("patch", "rayservice", "edge", "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "RayServiceReady",
                                        "message": "Serve applications are running",
                                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
        tier = eventually(lambda: (t := get(emulator, "itier", "edge")) and condition(t, "Ready").get("status")
                          == "True" and t, timeout=10, what="edge Ready from the RayService event")
        assert tier["status"]["replicas"]["ready"] == 1
        assert condition(tier, "Progressing")["status"] == "False"
        # The tier's readiness reaches its policy at once too (no resync either).
        eventually(lambda: {t["name"]: t["ready"] for t in get(emulator, "rpol", "default")["status"]["tiers"]}
                   ["edge"] is True, timeout=10, what="the policy sees edge ready")
        # Status changes do not loop back into more writes (the autoscaler's first tick lands around now too).
        eventually(lambda: settled_writes(emulator, passes=2) == 0, timeout=10, what="no more writes")


def test_a_deleted_rayservice_is_recreated_at_once(emulator: EmulatorProcess, tmp_path: Path) -> None:
    with running_operator(emulator, tmp_path, resync_seconds=600):  # no resync during this test
        apply_examples(emulator)
        first = eventually(lambda: get(emulator, "rayservice", "triage"))
        emulator.kubectl("delete", "rayservice", "triage")
        again = eventually(lambda: (r := get(emulator, "rayservice", "triage"))
                           and r["metadata"]["uid"] != first["metadata"]["uid"] and r, timeout=10,
                           what="a new RayService triage")
        assert again["spec"] == first["spec"]
