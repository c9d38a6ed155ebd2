"""CustomResourceDefinitions generated from the pydantic models in `model` (the one source).

`python -m tiered_operator.api.crds DIR` (`make crds`) writes them; a unit test fails when `crds/` drifts.
Pydantic's JSON schema (JSON Schema 2020-12) is turned into a Kubernetes structural schema in OpenAPI v3.0
form, which is all apiextensions.k8s.io/v1 accepts: `$ref`s inlined, `Optional[X]` becomes plain X (absent =
unset), `int | str` becomes `x-kubernetes-int-or-string`, a numeric `exclusiveMinimum: 0` becomes
`minimum: 0` + `exclusiveMinimum: true`, titles dropped, container defaults (`{}`/`[]`) emitted so the API
server's defaulting reaches nested fields before CEL rules run. Any other keyword outside OpenAPI v3.0's
structural subset raises, so a model change cannot ship a CRD a real API server refuses.

Pure: returns plain dicts; the only I/O is `main` writing files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from tiered_operator.api.model import GROUP, VERSION, InferenceTier, RoutingPolicy

READY = '.status.conditions[?(@.type=="Ready")].status'
# The keywords a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps, minus what
# structural schemas forbid), besides the `x-kubernetes-*` extensions.
OPENAPI_V3_KEYWORDS = frozenset({
    "type", "format", "description", "default", "nullable", "enum", "properties", "required", "items",
    "additionalProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties", "maxProperties",
})


class _StructuralSchema(GenerateJsonSchema):
    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None:
            return schema.get("default", NoDefault)
        if isinstance(factory, type) and issubclass(factory, BaseModel | dict):
            return {}
        if factory is list:
            return []
        return NoDefault


def _int_or_string(options: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`int | str` as `x-kubernetes-int-or-string`: each branch's bounds apply to its own JSON type."""
    if sorted(option.get("type", "") for option in options) != ["integer", "string"]:
        return None
    merged: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    for option in options:
        merged.update({k: v for k, v in option.items() if k != "type"})
    return merged


def _exclusive_bounds(node: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema 2020's numeric `exclusiveMinimum: 0` → OpenAPI v3.0's `minimum: 0, exclusiveMinimum: true`."""
    out = dict(node)
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[bound] = value
            out[exclusive] = True
    return out


def _structural(node: Any, defs: dict[str, Any], path: str = "", in_list: bool = False) -> Any:
    """`in_list`: inside a list item, where no default is written: a merge patch replaces lists whole, so
    defaulted items would differ from the applied file and every `kubectl apply` would say `configured`
    (the operator's models default them anyway)."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, path, in_list)
    if "anyOf" in node:
        options = [option for option in node["anyOf"] if option != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf" and not (k == "default" and v is None)}
        if len(options) == 1:
            return _structural({**options[0], **rest}, defs, path, in_list)
        if (int_or_string := _int_or_string(options)) is not None:
            return _structural({**int_or_string, **rest}, defs, path, in_list)
    out: dict[str, Any] = {}
    for key, value in _exclusive_bounds(node).items():
        if key in ("title", "$defs") or (key == "default" and in_list):
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key not in OPENAPI_V3_KEYWORDS and not key.startswith("x-kubernetes-"):
            raise ValueError(f"{path or '<root>'}: {key!r} is not an OpenAPI v3.0 structural schema keyword")
        if key == "properties":
            out[key] = {name: _structural(prop, defs, f"{path}.{name}", in_list) for name, prop in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, f"{path}[*]", True)
        elif key == "additionalProperties":
            out[key] = _structural(value, defs, f"{path}[*]", in_list)
        else:
            out[key] = value
    return out


def openapi_schema(spec_model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a spec model."""
    raw = spec_model.model_json_schema(by_alias=True, schema_generator=_StructuralSchema)
    spec = _structural(raw, raw.get("$defs", {}))
    assert isinstance(spec, dict)
    return spec


def _crd(
    *,
    model: type[InferenceTier] | type[RoutingPolicy],
    plural: str,
    short_name: str,
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
) -> dict[str, Any]:
    kind = model.model_fields["kind"].default
    spec_schema = openapi_schema(model.model_fields["spec"].annotation)  # type: ignore[arg-type]
    description = spec_schema.pop("description", "")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["tiered"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": {
                                    "type": "object",
                                    "description": "Written by the operator.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                            # At the root a rule sees metadata.name: names the children derive from it.
                            "x-kubernetes-validations": model.NAME_RULES,
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def inference_tier_crd() -> dict[str, Any]:
    return _crd(
        model=InferenceTier,
        plural="inferencetiers",
        short_name="itier",
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.id"},
            {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator.type"},
            {"name": "Ready-Replicas", "type": "integer", "jsonPath": ".status.replicas.ready"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.replicas.desired"},
            {"name": "Ready", "type": "string", "jsonPath": READY},
        ],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas.desired",
                "statusReplicasPath": ".status.replicas.ready",
                "labelSelectorPath": ".status.selector",
            },
        },
    )


def routing_policy_crd() -> dict[str, Any]:
    return _crd(
        model=RoutingPolicy,
        plural="routingpolicies",
        short_name="rpol",
        columns=[
            {"name": "Default", "type": "string", "jsonPath": ".spec.default"},
            {"name": "Bursting", "type": "boolean", "jsonPath": ".status.burst.active"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            {"name": "Ready", "type": "string", "jsonPath": READY},
        ],
        subresources={"status": {}},
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, as `make crds` writes them."""
    return {
        f"{crd['metadata']['name'].split('.', 1)[1]}_{crd['spec']['names']['plural']}.yaml": crd
        for crd in (inference_tier_crd(), routing_policy_crd())
    }


def dump(crd: dict[str, Any]) -> str:
    return "# Generated by `make crds` from operator/tiered_operator/api/model.py; do not edit.\n" + yaml.safe_dump(
        crd, sort_keys=False, width=110, allow_unicode=True
    )


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "crds")
    target.mkdir(parents=True, exist_ok=True)
    for name, crd in all_crds().items():
        (target / name).write_text(dump(crd))
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
