"""crd_validation: a valid base object + a table of one-field changes and the exact messages they produce."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml
from tiered_operator.api.crd_validation import (
    FieldError,
    apply_defaults,
    compile_rules,
    field_errors,
    validate_object,
)

CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds"
NOT_CHECKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)

TIER = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "weight": {"type": "integer", "minimum": 0, "default": 1},
        "tierRef": {"type": "string"},
        "external": {"type": "object", "properties": {"baseURL": {"type": "string"}}},
    },
    "x-kubernetes-validations": [
        {
            "rule": "has(self.tierRef) != has(self.external)",
            "message": "a tier names exactly one of tierRef or external",
        },
        {
            "rule": "!has(self.external) || self.external.baseURL.startsWith('https://')",
            "message": "https only",
        },
        {"rule": "self.weight >= oldSelf.weight", "message": "weight may not decrease"},
    ],
}
SPEC = {
    "type": "object",
    "required": ["replicas", "tiers", "default"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z][a-z0-9-]*$"},
        "engine": {"type": "string", "enum": ["vllm", "llama-cpp"], "default": "vllm"},
        "replicas": {
            "type": "object",
            "required": ["min", "max"],
            "properties": {
                "min": {"type": "integer", "minimum": 0},
                "max": {"type": "integer", "minimum": 1, "maximum": 100},
            },
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "message": "replicas.min must be ≤ replicas.max"}
            ],
        },
        "utilization": {
            "type": "number",
            "minimum": 0.1,
            "exclusiveMinimum": True,
            "maximum": 0.98,
            "default": 0.9,
        },
        "budgetUSD": {"type": "number", "maximum": 1000000},
        "autoscaling": {
            "type": "object",
            "default": {},
            "properties": {"target": {"type": "integer", "default": 70}},
        },
        "tiers": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": TIER,
        },
        "default": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 5}},
        "tags": {
            "type": "array",
            "x-kubernetes-list-type": "set",
            "items": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() <= 8"}]},
        },
        "maxTokens": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "storageClass": {
            "type": "string",
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "storageClass is immutable"}],
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "self.tiers.exists(t, t.name == self.default)",
            "messageExpression": "'default tier ' + self.default + ' is not one of the tiers'",
        },
        {
            "rule": "self.engine != 'llama-cpp' || self.utilization <= 0.5",
            "message": "llama-cpp runs at most 50% utilization",
            "fieldPath": ".utilization",
            "reason": "FieldValueForbidden",
        },
    ],
}
CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {
        "group": "example.dev",
        "names": {"kind": "Widget", "plural": "widgets"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": SPEC,
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}
BASE: dict[str, Any] = {
    "apiVersion": "example.dev/v1",
    "kind": "Widget",
    "metadata": {"name": "w", "namespace": "default", "labels": {"any": "thing"}},
    "spec": {
        "name": "triage",
        "replicas": {"min": 1, "max": 8},
        "tiers": [
            {"name": "a", "tierRef": "a"},
            {"name": "b", "external": {"baseURL": "https://x"}, "weight": 2},
        ],
        "default": "a",
        "labels": {"team": "ml"},
        "tags": ["x", "y"],
        "maxTokens": "10k",
        "storageClass": "fast",
    },
}
DELETE = object()


def changed(path: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A copy of ``base`` with the dotted ``path`` (``spec.tiers.0.name``) set to ``value`` (or deleted)."""
    obj = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = obj
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return obj


# fmt: off
CASES: list[tuple[str, Any, list[str]]] = [
    ("spec.name", "triage-2", []),
    ("spec.bogus", "pruned, not an error", []),
    ("spec.engine", None, []),  # a non-nullable null is dropped, then defaulted
    ("spec.note", None, []),
    ("spec.maxTokens", 10, []),
    ("spec.replicas.max", 0,
     ["spec.replicas.max: Invalid value: 0: spec.replicas.max in body should be greater than or equal to 1",
      'spec.replicas: Invalid value: "object": replicas.min must be ≤ replicas.max']),
    ("spec.replicas.max", 101,
     ["spec.replicas.max: Invalid value: 101: "
      "spec.replicas.max in body should be less than or equal to 100"]),
    ("spec.replicas.min", 9, ['spec.replicas: Invalid value: "object": replicas.min must be ≤ replicas.max']),
    ("spec.replicas.max", "two",
     ['spec.replicas.max: Invalid value: "string": '
      'spec.replicas.max in body must be of type integer: "string"', NOT_CHECKED]),
    ("spec.replicas.min", None, ["spec.replicas.min: Required value", NOT_CHECKED]),
    ("spec.replicas", DELETE, ["spec.replicas: Required value", NOT_CHECKED]),
    ("spec.engine", "tgi",
     ['spec.engine: Unsupported value: "tgi": supported values: "vllm", "llama-cpp"', NOT_CHECKED]),
    ("spec.name", "a" * 21, ["spec.name: Too long: may not be more than 20 bytes", NOT_CHECKED]),
    ("spec.name", "Triage",
     ["""spec.name: Invalid value: "Triage": spec.name in body should match '^[a-z][a-z0-9-]*$'"""]),
    ("spec.utilization", 1.0,
     ["spec.utilization: Invalid value: 1: spec.utilization in body should be less than or equal to 0.98"]),
    ("spec.utilization", 0.1,
     ["spec.utilization: Invalid value: 0.1: spec.utilization in body should be greater than 0.1"]),
    ("spec.budgetUSD", 2e6,
     ["spec.budgetUSD: Invalid value: 2e+06: spec.budgetUSD in body should be less than or equal to 1e+06"]),
    ("spec.tiers", [],
     ["spec.tiers: Invalid value: 0: spec.tiers in body should have at least 1 items",
      'spec: Invalid value: "object": default tier a is not one of the tiers']),
    ("spec.tiers", [{"name": n, "tierRef": n} for n in "abcd"],
     ["spec.tiers: Too many: 4: must have at most 3 items", NOT_CHECKED]),
    ("spec.tiers.1", {"tierRef": "b"}, ["spec.tiers[1].name: Required value", NOT_CHECKED]),
    ("spec.tiers.1.name", "a", ['spec.tiers[1]: Duplicate value: map[string]interface {}{"name":"a"}']),
    ("spec.tiers.0.external", {"baseURL": "https://y"},
     ['spec.tiers[0]: Invalid value: "object": a tier names exactly one of tierRef or external']),
    ("spec.tiers.1.external", {},
     ['spec.tiers[1]: Invalid value: "object": no such key: baseURL evaluating rule: https only']),
    ("spec.default", "zzz", ['spec: Invalid value: "object": default tier zzz is not one of the tiers']),
    ("spec.engine", "llama-cpp", ["spec.utilization: Forbidden: llama-cpp runs at most 50% utilization"]),
    ("spec.labels.team", "platform",
     ["spec.labels.team: Too long: may not be more than 5 bytes", NOT_CHECKED]),
    ("spec.tags", ["x", "x"], ['spec.tags[1]: Duplicate value: "x"']),
    ("spec.tags", ["abcdefghi"], ['spec.tags[0]: Invalid value: "string": failed rule: self.size() <= 8']),
    ("spec.maxTokens", True,
     ['spec.maxTokens: Invalid value: "boolean": spec.maxTokens in body must be of type integer,string: '
      '"boolean"', NOT_CHECKED]),
]
# fmt: on


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[f"{p}={v!r}"[:60] for p, v, _ in CASES])
def test_one_field_change(path: str, value: Any, expected: list[str]) -> None:
    assert validate_object(CRD, changed(path, value)) == expected


def test_base_is_valid_and_rules_compile() -> None:
    compile_rules(CRD)
    assert validate_object(CRD, BASE) == []


NEW_TIER = {"name": "c", "tierRef": "c", "weight": 0}
# fmt: off
UPDATES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unchanged", BASE, []),
    ("immutable field", changed("spec.storageClass", "slow"),
     ['spec.storageClass: Invalid value: "string": storageClass is immutable']),
    ("weight decreases", changed("spec.tiers.1.weight", 1),
     ['spec.tiers[1]: Invalid value: "object": weight may not decrease']),
    # list-map items correlate with their old selves by key, not by index
    ("tiers reordered", changed("spec.tiers", list(reversed(BASE["spec"]["tiers"]))), []),
    ("new tier has no old self", changed("spec.tiers", [*BASE["spec"]["tiers"], NEW_TIER]), []),
]
# fmt: on


@pytest.mark.parametrize(("new", "expected"), [(n, e) for _, n, e in UPDATES], ids=[i for i, _, _ in UPDATES])
def test_transition_rules_on_update(new: dict[str, Any], expected: list[str]) -> None:
    assert validate_object(CRD, new, old_obj=BASE) == expected


def test_transition_rules_skip_on_create_and_optional_old_self_runs() -> None:
    assert validate_object(CRD, changed("spec.storageClass", "slow")) == []
    crd = copy.deepcopy(CRD)
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"
    ]
    rules.append(
        {"rule": "oldSelf.hasValue() || self.replicas.min > 0", "optionalOldSelf": True, "message": "m"}
    )
    assert validate_object(crd, changed("spec.replicas.min", 0)) == ['spec: Invalid value: "object": m']
    assert validate_object(crd, changed("spec.replicas.min", 0), old_obj=BASE) == []


def test_apply_defaults_prunes_and_defaults_top_down() -> None:
    obj = changed("spec.engine", None, changed("spec.bogus", 1, changed("status", {"anything": {"goes": 1}})))
    out = apply_defaults(CRD, obj)
    spec = out["spec"]
    assert "bogus" not in spec
    assert spec["engine"] == "vllm"
    assert spec["utilization"] == 0.9
    assert spec["autoscaling"] == {"target": 70}  # default {} then its own defaults
    assert [t["weight"] for t in spec["tiers"]] == [1, 2]
    assert out["status"] == {"anything": {"goes": 1}}
    assert out["metadata"] == BASE["metadata"]
    assert obj["spec"]["bogus"] == 1  # the input is not mutated
    assert apply_defaults(CRD, out) == out


def test_field_errors_carry_status_cause_parts() -> None:
    [err] = field_errors(CRD, changed("spec.replicas.max", 101))
    assert err == FieldError("FieldValueInvalid", "spec.replicas.max", 101, err.detail)
    assert err.body == "Invalid value: 101: spec.replicas.max in body should be less than or equal to 100"


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ("self.min <=", "does not compile"),
        ("self.name.frobnicate()", r"undeclared function\(s\) frobnicate"),
        ("self.?name.orValue('x') == 'x'", "does not compile"),
    ],
)
def test_compile_rules_names_the_bad_rule(rule: str, error: str) -> None:
    crd = copy.deepcopy(CRD)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["replicas"]["x-kubernetes-validations"].append({"rule": rule})
    with pytest.raises(ValueError, match=error) as info:
        compile_rules(crd)
    assert "properties[spec].properties[replicas].x-kubernetes-validations[1].rule" in str(info.value)


@pytest.mark.parametrize("path", sorted(CRDS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_rule_in_our_crds_compiles(path: pathlib.Path) -> None:
    crd = yaml.safe_load(path.read_text())
    compile_rules(crd)
    assert any("x-kubernetes-validations" in line for line in path.read_text().splitlines())
