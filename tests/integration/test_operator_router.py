"""RoutingPolicy → its router (ServiceAccount, Role and RoleBinding for budgets, ConfigMap, Deployment,
Service) with the real operator, the real kubectl and the emulator: owned by the policy, config changes reach
only the ConfigMap, drift repaired, re-applying the examples is a no-op."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bed import EmulatorProcess, OperatorProcess, eventually
from tiered_router.config import RouterConfig

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ROUTER = "tiered-router-default"
KINDS = ("serviceaccount", "role", "rolebinding", "configmap", "deployment", "service")  # role(binding): budgets


def get(emulator: EmulatorProcess, *args: str) -> Any:
    result = emulator.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def versions(emulator: EmulatorProcess) -> dict[str, str]:
    return {kind: get(emulator, kind, ROUTER)["metadata"]["resourceVersion"] for kind in KINDS}


def router_config(emulator: EmulatorProcess) -> RouterConfig:
    return RouterConfig.model_validate(yaml.safe_load(get(emulator, "configmap", ROUTER)["data"]["router.yaml"]))


def test_a_policy_becomes_its_router_and_config_changes_reach_only_the_configmap(
        emulator: EmulatorProcess, operator: OperatorProcess) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples"))
    def with_endpoint() -> Any:
        policy = get(emulator, "rpol", "default")
        return policy if (policy.get("status") or {}).get("endpoint") else None

    policy = eventually(with_endpoint, what="policy endpoint")
    assert policy["status"]["endpoint"] == f"http://{ROUTER}.default.svc.cluster.local/v1"
    for kind in KINDS:
        obj = eventually(lambda kind=kind: get(emulator, kind, ROUTER), what=f"router {kind}")
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "name": "default",
            "uid": policy["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    config = eventually(lambda: (c := router_config(emulator)) and len(c.tiers) == 4 and c, what="all tiers")
    assert {tier.name for tier in config.tiers} == {"triage", "extract", "edge", "frontier"}
    container = get(emulator, "deployment", ROUTER)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["router", "--config", "/etc/tiered/router/router.yaml"]
    # The frontier key stays in the user's Secret: referenced by the pod, never copied into the ConfigMap.
    assert {"name": "TIERED_API_KEY_FRONTIER",
            "valueFrom": {"secretKeyRef": {"name": "frontier-api", "key": "api-key"}}} in container["env"]
    assert "frontier-api" not in json.dumps(get(emulator, "configmap", ROUTER)["data"])

    # Re-applying the same files is a no-op for every object (kubectl says so, and nothing is written).
    emulator.reset_requests()
    again = emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "examples")).stdout
    assert again.strip() and all(line.endswith("unchanged") for line in again.strip().splitlines()), again

    # A rule change: a new ConfigMap, the same pods.
    before = versions(emulator)
    emulator.kubectl("patch", "rpol", "default", "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/spec/rules/-", "value": {"match": {"keywords": ["refund"]}, "tier": "triage"}}]))
    eventually(lambda: any("refund" in rule.match.keywords for rule in router_config(emulator).rules),
               what="the new rule in the ConfigMap")
    after = versions(emulator)
    assert after["configmap"] != before["configmap"]
    assert {k: v for k, v in after.items() if k != "configmap"} == {
        k: v for k, v in before.items() if k != "configmap"}

    # A replica change rolls the Deployment.
    three = json.dumps({"spec": {"router": {"replicas": 3}}})
    emulator.kubectl("patch", "rpol", "default", "--type=merge", "-p", three)
    eventually(lambda: get(emulator, "deployment", ROUTER)["spec"]["replicas"] == 3, what="3 router replicas")

    # A hand edit of the Deployment is repaired; a deleted Service comes back.
    emulator.kubectl("scale", "deployment", ROUTER, "--replicas=1")
    eventually(lambda: get(emulator, "deployment", ROUTER)["spec"]["replicas"] == 3, what="replicas repaired")
    emulator.kubectl("delete", "service", ROUTER)
    eventually(lambda: get(emulator, "service", ROUTER), what="Service recreated")
