"""The generated CRDs: no drift from the models, and the schema + CEL rules as a table.

Style: one valid base object per kind, then a table of one-field changes and the exact message the API
server (here `crd_validation`, its offline stand-in) must answer with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mutations import DELETE, mutate
from tiered_operator.api.crd_validation import apply_defaults, validate_object
from tiered_operator.api.crds import all_crds, dump, inference_tier_crd, routing_policy_crd

ROOT = Path(__file__).resolve().parents[2]

TIER: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1",
    "kind": "InferenceTier",
    "metadata": {"name": "triage"},
    "spec": {
        "model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B",
                  "quantization": "awq", "bits": 4},
        "replicas": {"min": 1, "max": 4},
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "tiers": [
            {"name": "triage", "tierRef": "triage"},
            {"name": "frontier", "external": {"baseURL": "https://api.example.com/v1", "model": "big"},
             "pricing": {"inputPerMTok": 2, "outputPerMTok": 8}},
        ],
        "default": "triage",
        "rules": [{"match": {"taskTypes": ["classification"]}, "tier": "triage"}],
    },
}






def errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    return validate_object(crd, apply_defaults(crd, obj))


def test_crds_folder_matches_the_models() -> None:
    for name, crd in all_crds().items():
        on_disk = ROOT / "crds" / name
        assert on_disk.exists(), f"crds/{name} missing: run `make crds`"
        assert on_disk.read_text() == dump(crd), f"crds/{name} drifted from the models: run `make crds`"


def test_base_objects_and_examples_are_valid() -> None:
    assert errors(inference_tier_crd(), TIER) == []
    assert errors(routing_policy_crd(), POLICY) == []
    crds = {"InferenceTier": inference_tier_crd(), "RoutingPolicy": routing_policy_crd()}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert errors(crds[doc["kind"]], doc) == [], path


def test_defaults_reach_nested_fields() -> None:
    spec = apply_defaults(inference_tier_crd(), TIER)["spec"]
    assert spec["engine"] == "vllm"
    assert spec["accelerator"] == {"type": "H100", "gpusPerReplica": "auto", "memoryUtilization": 0.9,
                                   "cpusPerReplica": 2}
    assert spec["autoscaling"]["scaleDownStabilizationSeconds"] == 300
    assert spec["model"]["maxModelLen"] == 8192


TIER_CASES = [
    ("spec.replicas.max", 0,
     "spec.replicas.max: Invalid value: 0: spec.replicas.max in body should be greater than or equal to 1"),
    ("spec.replicas.min", 5,
     'spec.replicas: Invalid value: "object": replicas.min must be less than or equal to replicas.max'),
    ("spec.replicas.desired", 9,
     'spec.replicas: Invalid value: "object": replicas.desired must lie between replicas.min and '
     "replicas.max"),
    ("spec.model.quantization", "gguf",
     'spec: Invalid value: "object": gguf weights run only on engine llama-cpp, and llama-cpp runs only '
     "gguf weights"),
    ("spec.engine", "llama-cpp",
     'spec: Invalid value: "object": gguf weights run only on engine llama-cpp, and llama-cpp runs only '
     "gguf weights"),
    ("spec.accelerator", {"type": "CPU"},
     'spec: Invalid value: "object": accelerator CPU needs engine llama-cpp; GPU accelerators run engine '
     "vllm"),
    ("spec.model.bits", 16,
     'spec.model: Invalid value: "object": awq and gptq models are 4- or 8-bit: set bits to 4 or 8'),
    ("spec.model.quantization", "fp8",
     'spec.model: Invalid value: "object": fp8 quantization stores 8 bits: set bits: 8'),
    ("spec.model.bits", 3,
     'spec.model.bits: Unsupported value: 3: supported values: "4", "8", "16"'),
    ("spec.model.source", "ftp://x",
     'spec.model.source: Invalid value: "ftp://x": spec.model.source in body should match '
     "'^(hf|s3|gs|pvc|file|pkg)://.+'"),
    ("spec.model.parameters", "8 billion",
     'spec.model.parameters: Invalid value: "8 billion": spec.model.parameters in body should match '
     "'^[0-9]{1,5}(\\.[0-9]{1,3})?[MB]$'"),
    ("spec.model.id", DELETE, "spec.model.id: Required value"),
    ("spec.accelerator", {"type": "A100"},
     'spec.accelerator.type: Unsupported value: "A100": supported values: "H100", "H200", "B200", "CPU"'),
    ("spec.accelerator", {"gpusPerReplica": "half"},
     'spec.accelerator.gpusPerReplica: Invalid value: "half": spec.accelerator.gpusPerReplica in body '
     "should match '^(auto|[0-9]{1,2}(\\.[0-9]{1,4})?)$'"),
    ("spec.accelerator", {"memoryUtilization": 1.5},
     "spec.accelerator.memoryUtilization: Invalid value: 1.5: spec.accelerator.memoryUtilization in body "
     "should be less than or equal to 0.98"),
    ("spec.autoscaling", {"metric": "cpu"},
     'spec.autoscaling.metric: Unsupported value: "cpu": supported values: "gpu-utilization", '
     '"engine-active", "queue-depth"'),
]


@pytest.mark.parametrize(("path", "value", "message"), TIER_CASES, ids=[c[0] for c in TIER_CASES])
def test_inference_tier_rejections(path: str, value: Any, message: str) -> None:
    assert message in errors(inference_tier_crd(), mutate(TIER, path, value))


POLICY_CASES = [
    ("spec.default", "nope", 'spec: Invalid value: "object": default must name one of the tiers'),
    ("spec.baseline", "nope", 'spec: Invalid value: "object": baseline must name one of the tiers'),
    ("spec.tiers.1.name", "triage", 'spec: Invalid value: "object": tier names must be unique'),
    ("spec.rules.0.tier", "nope", "spec: Invalid value: \"object\": every rule's tier must name one of the "
     "tiers"),
    ("spec.tiers.0.fallback", ["nope"],
     'spec: Invalid value: "object": every fallback must name one of the tiers'),
    ("spec.tiers.0.external", {"baseURL": "https://x/v1", "model": "m"},
     'spec.tiers[0]: Invalid value: "object": a tier names exactly one of tierRef or external'),
    ("spec.tiers.1.external", DELETE,
     'spec.tiers[1]: Invalid value: "object": a tier names exactly one of tierRef or external'),
    ("spec.burst", {"from": "triage", "to": "elsewhere"},
     'spec: Invalid value: "object": burst.from and burst.to must name tiers'),
    ("spec.burst", {"from": "triage", "to": "frontier", "utilizationAbove": 60},
     'spec.burst: Invalid value: "object": burst.exitBelow must not exceed burst.utilizationAbove'),
    ("spec.escalation", {"from": "triage", "to": "gone"},
     'spec: Invalid value: "object": escalation.from and escalation.to must name tiers'),
    ("spec.rules.0.match", {"minPromptTokens": 10, "maxPromptTokens": 5},
     'spec.rules[0].match: Invalid value: "object": match.minPromptTokens must be less than or equal to '
     "match.maxPromptTokens"),
    ("spec.tiers", [], "spec.tiers: Invalid value: 0: spec.tiers in body should have at least 1 items"),
    ("spec.tiers.1.external", {"baseURL": "api.example.com", "model": "m"},
     'spec.tiers[1].external.baseURL: Invalid value: "api.example.com": spec.tiers[1].external.baseURL in '
     "body should match '^https?://.+'"),
]


@pytest.mark.parametrize(("path", "value", "message"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_routing_policy_rejections(path: str, value: Any, message: str) -> None:
    assert message in errors(routing_policy_crd(), mutate(POLICY, path, value))
