"""Parsing `tiered.dev` objects: raw dicts or YAML files → typed models, with errors a person can act on.

Validation runs in the same order as the API server: the generated CRD's structural schema with its
defaults and CEL rules (`crd_validation`), then the pydantic model. So `tiered render` rejects exactly
what `kubectl apply` would, with the same messages.

Pure apart from reading the file given to `load_file`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tiered_operator.api import crd_validation
from tiered_operator.api.crds import inference_tier_crd, routing_policy_crd
from tiered_operator.api.model import API_VERSION, InferenceTier, RoutingPolicy

KINDS: dict[str, tuple[type[InferenceTier] | type[RoutingPolicy], Any]] = {
    "InferenceTier": (InferenceTier, inference_tier_crd),
    "RoutingPolicy": (RoutingPolicy, routing_policy_crd),
}


class InvalidObject(ValueError):
    """An object failed validation; `problems` are field-path messages."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


@dataclass(frozen=True)
class Skipped:
    """A document in a file that is not ours (e.g. a Secret next to the tiers)."""

    kind: str
    name: str


def pydantic_problems(error: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()
    ]


def describe(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata") or {}
    return f"{raw.get('kind', '?')}/{meta.get('name', '?') if isinstance(meta, Mapping) else '?'}"


def parse_object(raw: Mapping[str, Any]) -> InferenceTier | RoutingPolicy:
    """Validate and parse one `tiered.dev` object. Raises InvalidObject."""
    where = describe(raw)
    kind = raw.get("kind")
    if kind not in KINDS or raw.get("apiVersion") != API_VERSION:
        raise InvalidObject(where, [f"not a {API_VERSION} InferenceTier or RoutingPolicy"])
    model, crd_factory = KINDS[kind]
    crd = crd_factory()
    defaulted = crd_validation.apply_defaults(crd, raw)
    if problems := crd_validation.validate_object(crd, defaulted):
        raise InvalidObject(where, problems)
    try:
        return model.model_validate(defaulted)
    except ValidationError as error:
        raise InvalidObject(where, pydantic_problems(error)) from None


def parse_spec(raw: Mapping[str, Any]) -> InferenceTier | RoutingPolicy:
    """Parse an object the API server already validated (the operator's path): pydantic only."""
    model, _ = KINDS[str(raw.get("kind"))]
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise InvalidObject(describe(raw), pydantic_problems(error)) from None


def load_file(path: Path) -> list[InferenceTier | RoutingPolicy | Skipped]:
    """Every document of a YAML file. Raises OSError, yaml.YAMLError or InvalidObject (naming the file)."""
    with path.open() as stream:
        documents = list(yaml.safe_load_all(stream))
    objects: list[InferenceTier | RoutingPolicy | Skipped] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, Mapping):
            raise InvalidObject(f"{path} document {index + 1}", ["not a YAML mapping"])
        if document.get("kind") not in KINDS:
            objects.append(Skipped(str(document.get("kind")), describe(document)))
            continue
        try:
            objects.append(parse_object(document))
        except InvalidObject as error:
            raise InvalidObject(f"{path}: {error.where}", error.problems) from None
    return objects
