"""≥ 200 generated bad (and borderline) specs against the real operator and the emulator.

Every case is either refused at apply with a message naming the field, or accepted and then reported in
status within one reconcile (Invalid with a Warning Event, or valid with its child written); none loops:
afterwards a quiet minute shows 0 writes at the emulator.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from bed import EmulatorProcess, OperatorProcess, eventually
from mutations import mutate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
TIERS = f"/apis/tiered.dev/v1alpha1/namespaces/{NAMESPACE}/inferencetiers"
POLICIES = f"/apis/tiered.dev/v1alpha1/namespaces/{NAMESPACE}/routingpolicies"
RAYSERVICES = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices"

TIER: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1", "kind": "InferenceTier", "metadata": {"name": "t"},
    "spec": {"model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B", "quantization": "awq",
                       "bits": 4},
             "accelerator": {"type": "H100"}, "replicas": {"min": 1, "max": 4}},
}
POLICY: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "p"},
    "spec": {"tiers": [{"name": "small", "tierRef": "t"},
                       {"name": "big", "external": {"baseURL": "https://api.example.com/v1", "model": "m"},
                        "pricing": {"inputPerMTok": 2, "outputPerMTok": 8}}],
             "default": "small"},
}
HUGE = "x" * 5000
TIER_VALUES: dict[str, list[Any]] = {
    "metadata.name": ["a" * 64, "a" * 253, "b" * 48, "UPPER", "-lead", "with.dot"],
    "spec.model.parameters": ["1" + "0" * 400 + "B", "-8B", "8", "", "8.5.5B", 8, "999999B", "0B", HUGE],
    "spec.model.bits": [3, "4", 64, -1, None, 1.5],
    "spec.model.quantization": ["int3", 5, "", "GGUF"],
    "spec.model.source": ["ftp://x/y", "", HUGE, "hf://", 7],
    "spec.model.maxModelLen": [0, -1, "big", 10**12],
    "spec.model.id": ["", HUGE, None],
    "spec.engine": ["tgi", 1, ""],
    "spec.accelerator.type": ["A100", "", 7, "h100"],
    "spec.accelerator.gpusPerReplica": ["-1", "lots", 0, 1000, "0.0001", "0.5", 2, "auto", 0.25],
    "spec.accelerator.memoryUtilization": [1.5, 0, -0.1, "high"],
    "spec.replicas": [{"min": 5, "max": 2}, {"min": -1, "max": 2}, {"min": 1, "max": 100000}, {"min": "one"},
                      "three"],
    "spec.autoscaling.target": [0, 101, "x", -5],
    "spec.autoscaling.intervalSeconds": [0, -5, "often"],
    "spec.tolerations": [[{"key": "k", "operator": "Exists", "tolerationSeconds": "30"}],
                         [{"key": "k", "effect": "Sometimes"}], "notalist", [{"key": "k", "operator": "Maybe"}],
                         [{"key": "bad key!", "operator": "Exists"}], [HUGE]],
    "spec.nodeSelector": [{"bad key!": "v"}, {"k": "v" * 100}, ["x"], {"k": 1}],
    "spec.pricing.gpuHourUSD": [-1, "cheap"],
    "spec.model": [{"id": "big", "source": "hf://o/m", "parameters": "405B", "bits": 16},
                   {"id": "big", "source": "hf://o/m", "parameters": "70B", "bits": 16}],
    "spec.accelerator": [{"type": "CPU"}, {"type": "B200", "gpusPerReplica": 8}],
    "spec.image": ["", HUGE, "UPPER CASE:tag"],
}
POLICY_VALUES: dict[str, list[Any]] = {
    "metadata.name": ["a" * 64, "a" * 253],
    "spec.default": ["nope", "", 3],
    "spec.baseline": ["nope"],
    "spec.tiers": [[], [{"name": "small", "tierRef": "t"}, {"name": "small", "tierRef": "t"}],
                   [{"name": "auto", "tierRef": "t"}],
                   [{"name": "small", "tierRef": "t", "fallback": ["small"]}],
                   [{"name": "small", "tierRef": "t"},
                    {"name": "big", "external": {"baseURL": "https://api.example.com/v1", "model": "m"}}],
                   [{"name": "small"}], [{"name": "small", "tierRef": "missing"}]],
    "spec.rules": [[{"match": {"regex": "("}, "tier": "small"}], [{"match": {}, "tier": "nope"}],
                   [{"match": {"keywords": [HUGE]}, "tier": "small"}], "rules"],
    "spec.burst": [{"from": "small", "to": "small"}, {"from": "big", "to": "small"},
                   {"from": "small", "to": "big", "utilizationAbove": 150}],
    "spec.escalation": [{"from": "small", "to": "small"}, {"from": "small", "to": "nope"}],
}




def cases() -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """(id, kind plural path, object, mutated paths): every single change, then random pairs."""
    found: list[tuple[str, str, dict[str, Any], list[str]]] = []
    for kind, base, table in (("tier", TIER, TIER_VALUES), ("policy", POLICY, POLICY_VALUES)):
        for path, values in table.items():
            found += [(kind, path, mutate(base, path, value), [path]) for value in values]
    rng = random.Random(7)
    tier_paths = [p for p in TIER_VALUES if p != "metadata.name"]
    for _ in range(120):
        first, second = rng.sample(tier_paths, 2)
        obj = mutate(mutate(TIER, first, rng.choice(TIER_VALUES[first])), second, rng.choice(TIER_VALUES[second]))
        found.append(("tier", f"{first}+{second}", obj, [first, second]))
    numbered = []
    for index, (kind, what, obj, paths) in enumerate(found):
        if "metadata.name" not in paths:
            obj["metadata"]["name"] = f"fz-{kind}-{index:03d}"
        numbered.append((f"{index:03d} {kind} {what}", TIERS if kind == "tier" else POLICIES, obj, paths))
    return numbered


def names_a_field(message: str, paths: list[str]) -> bool:
    return any(path.split(".")[-1] in message or path.split(".")[-2] in message for path in paths)


def test_every_bad_spec_is_refused_or_reported_and_nothing_loops(emulator: EmulatorProcess,
                                                                 operator: OperatorProcess) -> None:
    emulator.kubectl("apply", "--validate=false", "-f", str(ROOT / "crds"))
    generated = cases()
    assert len(generated) >= 200
    accepted: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for label, collection, obj, paths in generated:
        code, body = emulator.api("POST", collection, obj)
        if code == 201:
            accepted[(collection, body["metadata"]["name"])] = (label, paths)
            continue
        assert code in (400, 422), (label, code, body)
        assert names_a_field(body["message"], paths), (label, body["message"])
    assert accepted, "some cases must get through admission (semantic checks happen in the operator)"

    def conditions(collection: str, name: str) -> dict[str, dict[str, Any]]:
        code, obj = emulator.api("GET", f"{collection}/{name}")
        assert code == 200
        status = obj.get("status") or {}
        assert status.get("observedGeneration") == obj["metadata"]["generation"]
        return {c["type"]: c for c in status.get("conditions") or []}

    def reported() -> bool:
        for collection, name in accepted:
            assert "Invalid" in conditions(collection, name), name
        return True

    eventually(reported, timeout=90, what="a condition on every accepted object")
    _, events = emulator.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events")
    warnings = {(e["involvedObject"]["name"], e["reason"]) for e in events["items"] if e["type"] == "Warning"}
    _, children = emulator.api("GET", RAYSERVICES)
    child_names = {c["metadata"]["name"] for c in children["items"]}
    outcomes: dict[str, int] = {}
    for (collection, name), (label, _) in accepted.items():
        invalid = conditions(collection, name)["Invalid"]
        if invalid["status"] == "True":
            assert (name, invalid["reason"]) in warnings, (label, invalid)
            assert invalid["message"], label
            outcome = f"Invalid/{invalid['reason']}"
        else:
            assert collection == POLICIES or name in child_names, (label, "valid but no RayService")
            outcome = "valid"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"{len(generated)} cases: {len(generated) - len(accepted)} refused at apply; accepted: {outcomes}")

    def settled() -> bool:  # the autoscaler's first tick (every 5 s) adds its conditions once
        emulator.reset_requests()
        time.sleep(6)
        return emulator.writes() == 0

    eventually(settled, timeout=60, interval=0, what="no more writes")
    emulator.reset_requests()
    time.sleep(60)
    assert emulator.writes() == 0, json.dumps(
        {f"{v} {r} {s}": n for (v, r, s), n in emulator.requests().items() if n})
