"""A Kubernetes API emulator for tests and local use: `kmock.KubernetesEmulator` with the gaps filled.

Owns: an in-memory object store served over HTTP on loopback, close enough to kube-apiserver that the real
`kopf run` and the real `kubectl` work against it, plus the `tiered cluster` command that serves it.
Must not: import the operator's own modules (except the optional CRD validator), or leave loopback.

kmock provides the HTTP server, the request plumbing, discovery scaffolding and its DSL for ad-hoc routes
(`/readyz`, `/_emulator/...`). Everything under `/api/...` and `/apis/.../<plural>` is served here, because
kmock 0.8 gets most of it wrong for a real client (see ../shared/TESTING.md):

- ObjectMeta validation (names, labels, annotation size) for every kind; request bodies up to 3 MiB;
- objects get `uid`, `creationTimestamp`, `generation` and `resourceVersion` (one global counter);
  `generateName` works; a namespaced URL sets `metadata.namespace`; no-op writes change nothing;
- `generation` starts at 1 and grows when anything outside `metadata`/`status` changes (and when
  deletion starts, as in Kubernetes); with a `status` subresource, main writes keep `status` and `/status`
  writes change only `status`; `/scale` serves an `autoscaling/v1` Scale from the CRD's paths;
- PUT with optimistic concurrency (409); PATCH as JSON merge patch, JSON patch (a failed `test` → 422),
  strategic merge patch for built-in kinds (lists merged by the usual keys, 415 for custom resources as in
  Kubernetes) and server-side apply (as create-or-merge, no field ownership); kubectl's protobuf bodies for
  namespaces/configmaps/secrets/serviceaccounts; `fieldValidation=Strict` (kubectl's default) rejects
  fields the CRD schema would prune, via a stub OpenAPI v3 that tells kubectl to validate on the server;
- lists carry `kind`/`apiVersion`/`resourceVersion`; label selectors (`=`, `==`, `!=`, `in`, `notin`,
  `key`, `!key`) and field selectors (any dotted path, `=`/`!=`); `kubectl get` gets Tables built from
  `additionalPrinterColumns` (plus NAME and AGE);
- watches replay from the requested `resourceVersion` (410 when it fell out of the event log), else send
  the current objects as ADDED; events are ordered, none is lost while a watch starts; selectors apply to
  events (an object leaving a selector is DELETED for that watch); BOOKMARKs; `timeoutSeconds`;
- DELETE with finalizers sets `deletionTimestamp`; the object goes when the last finalizer is removed;
  removal garbage-collects dependents whose `ownerReferences` point at the removed `uid`; deleting a
  namespace deletes its contents; applying a CRD object registers (deleting it unregisters) its resources;
- an optional validator `validate(crd, new, old) -> list[str]` turns messages into 422 `Invalid`, and an
  optional defaulter `(crd, obj) -> obj` prunes and defaults (`tiered cluster` wires in crd_validation's);
- request counters by (verb, resource, subresource): `GET /_emulator/requests`, `POST .../reset`;
  injected failures: `POST /_emulator/faults` (`{"verb", "resource", "subresource", "code", "count"}`).

Not emulated (docs/emulator.md has the list): authn/authz, admission webhooks, field managers, other
protobuf bodies, pagination (`limit` returns everything), conversion between CRD versions (objects are
shared, only `apiVersion` is rewritten), controllers (no pods behind Deployments), namespace existence.

Throughput (`python tests/bed.py --bench`: 500 custom resources, 16 concurrent aiohttp clients in another
process, 2 cores shared with other work, validation off): 2,800-3,900 GET/s and 2,300-3,600 merge-PATCH/s.
Plain kmock 0.8 decays to ~50 GET/s because its root matches every request against the whole request
history: here resource requests bypass that matcher, and the routes kmock still serves keep only their
in-flight requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import http
import json
import os
import random
import re
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps, rendering

Obj = dict[str, Any]
Validator = Callable[[Obj, Obj, "Obj | None"], list[str]]
Defaulter = Callable[[Obj, Obj], Obj]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CRD_PATHS = (REPO_ROOT / "crds", REPO_ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml")
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request body limit (aiohttp's default is 1 MiB)
EVENT_LOG_SIZE = 10_000  # events kept for watches that resume from a resourceVersion


class ApiError(Exception):
    """A failure rendered as a `v1 Status` with the HTTP code, the way kube-apiserver reports it."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": self.message, "reason": self.reason, "code": self.code}
        return status | ({"details": self.details} if self.details else {})


# --------------------------------------------------------------------------------------------------
# Resource kinds


@dataclasses.dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False  # has a status subresource
    scale: tuple[tuple[str, str], ...] = ()  # (("specReplicasPath", ".spec.replicas"), ...)
    columns: tuple[Obj, ...] = ()  # additionalPrinterColumns
    crd: Obj | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store(self) -> tuple[str, str]:  # all versions of a resource share one set of objects
        return self.group, self.plural

    @property
    def resource(self) -> str:  # as in messages: "inferencetiers.tiered.dev"
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _builtin(api_version: str, plural: str, kind: str, namespaced: bool = True, short: str = "",
             status: bool = False, scale: bool = False, all_category: bool = False) -> Kind:
    group, _, version = api_version.rpartition("/")
    paths = (("specReplicasPath", ".spec.replicas"), ("statusReplicasPath", ".status.replicas"))
    return Kind(group, version, plural, kind, namespaced, kind.lower(), tuple(short.split()),
                ("all",) if all_category else (), status, paths if scale else ())


BUILTIN_KINDS = (
    _builtin("v1", "namespaces", "Namespace", namespaced=False, short="ns", status=True),
    _builtin("v1", "events", "Event", short="ev"),
    _builtin("v1", "configmaps", "ConfigMap", short="cm"),
    _builtin("v1", "secrets", "Secret"),
    _builtin("v1", "services", "Service", short="svc", status=True, all_category=True),
    _builtin("v1", "serviceaccounts", "ServiceAccount", short="sa"),
    _builtin("v1", "pods", "Pod", short="po", status=True, all_category=True),
    _builtin("events.k8s.io/v1", "events", "Event", short="ev"),
    _builtin("apps/v1", "deployments", "Deployment", short="deploy", status=True, scale=True,
             all_category=True),
    _builtin("coordination.k8s.io/v1", "leases", "Lease"),
    _builtin("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short="crd crds", status=True),
)


def kinds_from_crd(crd: Obj) -> list[Kind]:
    """The served versions of a CustomResourceDefinition, as Kinds."""
    spec, names = crd["spec"], crd["spec"]["names"]
    kinds = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale")
        kinds.append(Kind(
            group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", names["kind"].lower()),
            short_names=tuple(names.get("shortNames", ())), categories=tuple(names.get("categories", ())),
            status="status" in subresources, scale=tuple(sorted(scale.items())) if scale else (),
            columns=tuple(version.get("additionalPrinterColumns", ())), crd=crd,
        ))
    return kinds


def load_crds(paths: Iterable[str | os.PathLike[str]]) -> list[Obj]:
    """CustomResourceDefinitions from YAML files or directories of them (missing paths are skipped)."""
    crds = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            with file.open() as stream:
                docs = list(yaml.load_all(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
            crds += [doc for doc in docs if doc and doc.get("kind") == "CustomResourceDefinition"]
    return crds


RAYSERVICE_FALLBACK_CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "rayservices.ray.io"},
    "spec": {"group": "ray.io", "scope": "Namespaced",
             "names": {"kind": "RayService", "plural": "rayservices", "singular": "rayservice"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


# --------------------------------------------------------------------------------------------------
# Pure helpers: patches, selectors, JSONPath, tables


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value; `target` is not modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges by key (common ones of built-in kinds); other lists are replaced.
SMP_MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
                  "volumes": "name", "env": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
                  "ports": "containerPort|port", "conditions": "type", "ownerReferences": "uid"}
SMP_SET_LISTS = {"finalizers"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for built-in kinds: keyed lists merge item by item (`$patch: delete` removes
    one), `$setElementOrder` orders them, `$deleteFromPrimitiveList` removes values; other lists replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) and patch.get("$patch") != "replace" else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            result[field] = [item for item in result.get(field, []) if item not in value]
        elif key.startswith("$"):
            continue
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list) and key in SMP_SET_LISTS:
            result[key] = result[key] + [item for item in value if item not in result[key]]
        elif isinstance(value, list) and isinstance(result.get(key), list) and key in SMP_MERGE_KEYS:
            order = patch.get(f"$setElementOrder/{key}")
            result[key] = _merge_keyed(result[key], value, SMP_MERGE_KEYS[key], order)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_keyed(live: list[Any], patch: list[Any], keys: str, order: list[Obj] | None) -> list[Any]:
    merged = list(live)
    for item in patch:
        key = next((k for k in keys.split("|") if isinstance(item, dict) and k in item), None)
        if key is None:
            return [strategic_merge_patch(None, item) for item in patch]  # not keyed: replace
        same = [i for i, x in enumerate(merged) if isinstance(x, dict) and x.get(key) == item[key]]
        index = same[0] if same else None
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch(None, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    if order:
        ranks = {json.dumps(entry, sort_keys=True): rank for rank, entry in enumerate(order)}

        def rank(item: Any) -> int:
            ident = {k: item.get(k) for k in order[0]} if isinstance(item, dict) else item
            return ranks.get(json.dumps(ident, sort_keys=True), len(ranks))

        merged.sort(key=rank)
    return merged


class PatchError(ValueError):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, ops: list[Obj]) -> Any:
    """RFC 6902 JSON patch on a copy of `doc`; PatchError on a failed `test` or a bad path."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise PatchError(f"test failed: {op['path']} is not {op['value']!r}")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
                kind, op = "add", {"path": op["path"], "value": value}
            if not parts:
                if kind == "remove":
                    raise PatchError("cannot remove the whole document")
                doc = copy.deepcopy(op["value"])
                continue
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    if not 0 <= index <= len(parent):
                        raise PatchError(f"index out of range: {op['path']}")
                    parent.insert(index, copy.deepcopy(op["value"]))
                elif kind == "remove":
                    del parent[index]
                elif kind == "replace":
                    parent[index] = copy.deepcopy(op["value"])
                else:
                    raise PatchError(f"unknown op {kind!r}")
            elif isinstance(parent, dict):
                if kind in ("remove", "replace") and last not in parent:
                    raise PatchError(f"no such path: {op['path']}")
                if kind == "remove":
                    del parent[last]
                elif kind in ("add", "replace"):
                    parent[last] = copy.deepcopy(op["value"])
                else:
                    raise PatchError(f"unknown op {kind!r}")
            else:
                raise PatchError(f"no such path: {op['path']}")
        except (KeyError, IndexError, ValueError, TypeError) as error:
            if isinstance(error, PatchError):
                raise
            raise PatchError(f"cannot apply {op!r}: {error!r}") from error
    return doc


_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*(?:,|$)"
)


Requirement = tuple[str, str, frozenset[str]]  # (operator, key, values)


def parse_selector(text: str) -> list[Requirement]:
    """A label or field selector: `a=b,c!=d,e in (f,g),h notin (i),j,!k`."""
    requirements: list[Requirement] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _REQUIREMENT.match(text, pos)
        if not match or match.end() == pos:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        pos = match.end()
        if match["set"]:
            values = frozenset(v.strip() for v in match["values"].split(","))
            requirements.append((match["set"], match["key"], values))
        elif match["op"]:
            op = "notin" if match["op"] == "!=" else "in"
            requirements.append((op, match["key"], frozenset([match["value"]])))
        else:
            requirements.append(("absent" if match["neg"] else "present", match["key"], frozenset()))
    return requirements


def selects(requirements: list[Requirement], get: Callable[[str], str | None]) -> bool:
    for op, key, values in requirements:
        value = get(key)
        if op == "present":
            ok = value is not None
        elif op == "absent":
            ok = value is None
        else:
            ok = (value in values) == (op == "in")
        if not ok:
            return False
    return True


def field(obj: Obj, path: str) -> str | None:
    """A field by dotted path as a selector sees it (`spec.x.y`), or None."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value).lower() if isinstance(value, bool) else str(value)


_JSONPATH_TOKEN = re.compile(
    r"\.(?P<key>[A-Za-z0-9_$-]+)|\[(?P<index>-?\d+)\]|\[['\"](?P<quoted>[^'\"]+)['\"]\]"
    r"|\[\?\(@\.(?P<fkey>[\w.-]+)\s*==\s*['\"](?P<fvalue>[^'\"]*)['\"]\)\]|\[\*\]|\.\*"
)


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Simple JSONPath as used by printer columns: `.a.b`, `[0]`, `[*]`, `[?(@.type=="Ready")]`."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = expr.removeprefix("$")
    values, pos = [obj], 0
    while pos < len(expr):
        match = _JSONPATH_TOKEN.match(expr, pos)
        if not match:
            return []
        pos, found = match.end(), []
        for value in values:
            if match["key"] or match["quoted"]:
                key = match["key"] or match["quoted"]
                if isinstance(value, dict) and key in value:
                    found.append(value[key])
            elif match["index"] is not None:
                if isinstance(value, list) and -len(value) <= int(match["index"]) < len(value):
                    found.append(value[int(match["index"])])
            elif match["fkey"]:
                for item in value if isinstance(value, list) else []:
                    if isinstance(item, dict) and field(item, match["fkey"]) == match["fvalue"]:
                        found.append(item)
            elif isinstance(value, dict):  # [*] or .*
                found += list(value.values())
            elif isinstance(value, list):
                found += value
        values = found
    return values


def _path_get(obj: Obj, path: str) -> Any:
    found = jsonpath(obj, path)
    return found[0] if found else None


def _path_set(obj: Obj, path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
DNS_LABEL_NAMES = {("", "namespaces"), ("", "services")}  # other kinds take DNS subdomain names


def metadata_errors(store: tuple[str, str], meta: Obj) -> list[str]:
    """ObjectMeta validation as the apiserver does it for every kind: name, labels, annotation size."""
    errors, name = [], str(meta.get("name", ""))
    if store in DNS_LABEL_NAMES and not (len(name) <= 63 and re.fullmatch(_DNS_LABEL, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                      "lower case alphanumeric characters or '-', start and end with an alphanumeric "
                      "character, and be no more than 63 characters")
    elif not (len(name) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, name)):
        errors.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                      "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                      "alphanumeric character")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, local = str(key).rpartition("/")
        if not (len(local) <= 63 and re.fullmatch(_QUALIFIED, local)
                and (not prefix or (len(prefix) <= 253 and re.fullmatch(_DNS_SUBDOMAIN, prefix)))):
            errors.append(f'metadata.labels: Invalid value: "{key}": name part must consist of alphanumeric '
                          "characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                          " (at most 63 characters, with an optional DNS subdomain prefix)")
        if not isinstance(value, str) or len(value) > 63 or (value and not re.fullmatch(_QUALIFIED, value)):
            errors.append(f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                          "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                          "alphanumeric character (at most 63 characters)")
    size = sum(len(str(k)) + len(str(v)) for k, v in (meta.get("annotations") or {}).items())
    if size > 256 * 1024:
        errors.append("metadata.annotations: Too long: must have at most 262144 bytes")
    return errors


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(timestamp: str | None) -> str:
    """Like kubectl's HumanDuration: 45s, 5m10s, 3h, 2d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{days}d"


def table(kind: Kind, objs: list[Obj], include: str, resource_version: str) -> Obj:
    """A `meta.k8s.io/v1 Table` as `kubectl get` asks for: NAME, the printer columns, AGE."""
    columns = [c for c in kind.columns if c.get("jsonPath")]
    age_column = not any(c["jsonPath"].strip() == ".metadata.creationTimestamp" for c in columns)
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [{"name": c["name"], "type": "string" if c.get("type") in (None, "date") else c["type"],
                     "format": c.get("format", ""), "description": c.get("description", ""),
                     "priority": c.get("priority", 0)} for c in columns]
    if age_column:
        definitions.append({"name": "Age", "type": "string", "format": "", "priority": 0,
                            "description": "CreationTimestamp is a timestamp representing the server time "
                                           "when this object was created."})
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            found = jsonpath(obj, column["jsonPath"])
            value = found[0] if found else None
            if column.get("type") == "date" and isinstance(value, str):
                value = human_age(value)
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            cells.append(value)
        if age_column:
            cells.append(human_age(obj["metadata"].get("creationTimestamp")))
        row: Obj = {"cells": cells}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "columnDefinitions": definitions, "rows": rows,
            "metadata": {"resourceVersion": resource_version}}


# --------------------------------------------------------------------------------------------------
# The emulator


@dataclasses.dataclass
class Event:
    rv: int
    store: tuple[str, str]
    type: str
    obj: Obj
    old: Obj | None


@dataclasses.dataclass
class Call:
    """One resource request, parsed from the URL the way kube-apiserver routes it."""

    kind: Kind
    verb: str
    namespace: str | None
    name: str | None
    subresource: str
    params: dict[str, str]
    headers: Any
    body: bytes

    def data(self) -> Any:
        if self.body.startswith(PROTOBUF_MAGIC):
            return decode_protobuf(self.body)
        try:
            return json.loads(self.body) if self.body else {}
        except ValueError:
            try:
                return yaml.safe_load(self.body)
            except yaml.YAMLError as error:
                raise ApiError(400, "BadRequest", f"cannot parse the request body: {error}") from error

    @property
    def dry_run(self) -> bool:
        return bool(self.params.get("dryRun"))

    @property
    def as_table(self) -> bool:
        return "as=Table" in self.headers.get("Accept", "")


# kubectl's `create namespace|configmap|secret|serviceaccount` generators send protobuf, not JSON. Decoded
# here just enough for those four kinds (other protobuf bodies get a 415 that says to use `kubectl apply`).
PROTOBUF_MAGIC = b"k8s\x00"
_PB_META: dict[int, Any] = {1: "name", 2: "generateName", 3: "namespace", 11: ("labels", "map"),
                 12: ("annotations", "map"), 14: ("finalizers", "list")}
_PB_KINDS: dict[str, dict[int, Any]] = {
    "Namespace": {1: ("metadata", _PB_META)},
    "ServiceAccount": {1: ("metadata", _PB_META)},
    "ConfigMap": {1: ("metadata", _PB_META), 2: ("data", "map"), 3: ("binaryData", "bytes-map"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", _PB_META), 2: ("data", "bytes-map"), 3: ("type", "str"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
}


def _pb_fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """Protobuf wire format: (field number, varint or bytes) pairs."""
    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            value, shift, i = value | (data[i] & 0x7F) << shift, shift + 7, i + 1
            if data[i - 1] < 0x80:
                return value, i

    i = 0
    while i < len(data):
        key, i = varint(i)
        value: Any
        if key & 7 == 0:
            value, i = varint(i)
        elif key & 7 == 2:
            size, i = varint(i)
            value, i = data[i:i + size], i + size
        else:
            size = 8 if key & 7 == 1 else 4
            value, i = data[i:i + size], i + size
        yield key >> 3, value


def _pb_decode(data: bytes, schema: dict[int, Any]) -> Obj:
    out: Obj = {}
    for number, value in _pb_fields(data):
        name, kind = schema[number] if isinstance(schema.get(number), tuple) else (schema.get(number), "str")
        if name is None:
            continue
        if isinstance(kind, dict):
            out[name] = _pb_decode(value, kind)
        elif kind in ("map", "bytes-map"):
            entry = dict(_pb_fields(value))
            key, item = entry.get(1, b"").decode(), entry.get(2, b"")
            text = base64.b64encode(item).decode() if kind == "bytes-map" else item.decode()
            out.setdefault(name, {})[key] = text
        elif kind == "list":
            out.setdefault(name, []).append(value.decode())
        elif kind == "bool":
            out[name] = bool(value)
        elif value:  # proto2 encodes empty strings; JSON omits them
            out[name] = value.decode()
    return out


def decode_protobuf(body: bytes) -> Obj:
    envelope = dict(_pb_fields(body[len(PROTOBUF_MAGIC):]))
    type_meta = dict(_pb_fields(envelope.get(1, b"")))
    api_version, kind = (type_meta.get(n, b"").decode() for n in (1, 2))
    if kind not in _PB_KINDS:
        raise ApiError(415, "UnsupportedMediaType", f"the emulator reads protobuf only for "
                       f"{', '.join(_PB_KINDS)}, not {kind}: send JSON (e.g. `kubectl apply -f`)")
    return {"apiVersion": api_version, "kind": kind, **_pb_decode(envelope.get(2, b""), _PB_KINDS[kind])}


def parse_path(path: str) -> tuple[str, str, str | None, str | None, str | None, str] | None:
    """(group, version, namespace, plural, name, subresource) of a resource URL, else None."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_subresource = len(rest) == 3 and rest[2] in ("status", "finalize")  # /namespaces/NAME/status
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return group, version, namespace, rest[0], rest[1] if len(rest) > 1 else None, "/".join(rest[2:])


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """The emulator: `async with Emulator(crd_paths=[...]) as emu, kmock.Server(emu) as server: ...`."""

    crd_paths: Iterable[str | os.PathLike[str]] = ()
    crds: Iterable[Obj] = ()
    validator: Validator | None = None
    defaulter: Defaulter | None = None  # (crd, obj) -> obj as stored: pruned, schema defaults applied
    bookmark_interval: float = 1.0

    _kinds: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str], dict[tuple[str | None, str], Obj]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False)
    _rv: int = attrs.field(default=0, init=False)
    _log: collections.deque[Event] = attrs.field(
        factory=lambda: collections.deque(maxlen=EVENT_LOG_SIZE), init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _watchers: dict[tuple[str, str], set[asyncio.Queue[Event | None]]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)
    counts: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    faults: list[Obj] = attrs.field(factory=list, init=False)  # injected failures, see _serve_add_fault

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self["get /readyz"] << b"ok"
        self["get /healthz"] << b"ok"
        self["get /livez"] << b"ok"
        self["get /openapi/v3"] << self._serve_openapi_root
        self["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_group_version
        self["get /_emulator/requests"] << (lambda: self.request_counts())
        self["post /_emulator/requests/reset"] << self._serve_reset
        self["post /_emulator/faults"] << self._serve_add_fault
        self["delete /_emulator/faults"] << self._serve_clear_faults
        for kind in BUILTIN_KINDS:
            self._register(kind)
        crds = list(self.crds) + load_crds(self.crd_paths)
        if not any(crd["spec"]["group"] == "ray.io" for crd in crds):
            crds.append(RAYSERVICE_FALLBACK_CRD)
        for crd in crds:
            self.create_object("customresourcedefinitions.apiextensions.k8s.io", crd)
        for namespace in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create_object("namespaces", {"metadata": {"name": namespace}})

    # ---- the request path ---------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        raw = raw.clone(client_max_size=MAX_BODY)
        parsed = parse_path(raw.path)
        if parsed is None:
            return await super().__call__(raw)  # discovery, health, /_emulator, 404s: kmock's routes
        group, version, namespace, plural, name, subresource = parsed
        kind = self._kinds.get((group, version, plural or ""))
        verbs = {"GET": "list" if name is None else "get", "POST": "create", "PUT": "update",
                 "PATCH": "patch", "DELETE": "deletecollection" if name is None else "delete"}
        verb = verbs.get(raw.method) or raw.method.lower()
        params = dict(raw.query)
        if verb in ("get", "list") and params.get("watch") in ("true", "1"):
            verb = "watch"
        self.counts[verb, plural or "", subresource] += 1
        try:
            self._inject_fault(verb, plural or "", subresource)
            if kind is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if kind.namespaced is False and namespace is not None:
                raise ApiError(404, "NotFound", f"{kind.resource} is not namespaced")
            call = Call(kind, verb, namespace, name, subresource, params, raw.headers, await raw.read())
            if verb == "watch":
                return await self._watch(raw, call)
            code, payload = self._serve(call)
            return aiohttp.web.Response(body=json.dumps(payload).encode(), status=code,
                                        content_type="application/json")
        except ApiError as error:
            return aiohttp.web.json_response(error.status(), status=error.code)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock's matcher scans the whole request history for every request: keep no history (the requests
        # in flight only), and no accumulated errors or per-reaction requests either.
        if self._errors:
            self._errors[-1].clear()
        try:
            return await apps.RawHandler._handle(self, request)  # not the parent's in-memory store
        finally:
            self._requests[:] = [r for r in self._requests if r is not request]
            for payload in self._payloads:
                payload._requests[:] = [r for r in payload._requests if r is not request]

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError):
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        if isinstance(exc, kmock.KubernetesError):
            reason = "NotFound" if exc.status == 404 else str(exc.reason)
            error = ApiError(exc.status, reason, str(exc.message))
            return aiohttp.web.json_response(error.status(), status=exc.status)
        return await super()._render_error(exc)

    def _serve(self, call: Call) -> tuple[int, Obj]:
        kind, sub = call.kind, call.subresource
        if sub and (sub not in ("status", "scale") or (sub == "status" and not kind.status)
                    or (sub == "scale" and not kind.scale)):
            raise ApiError(404, "NotFound", f"{kind.resource} has no subresource {sub!r}")
        named = call.verb in ("get", "update", "patch", "delete")
        if (call.name is None) == named or call.verb not in VERBS:
            raise ApiError(405, "MethodNotAllowed", f"{call.verb} is not supported on this URL")
        if call.verb == "list":
            objs = self._select(call)
            rv = str(self._rv)
            if call.as_table:
                return 200, table(kind, objs, call.params.get("includeObject", "Metadata"), rv)
            return 200, {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                         "metadata": {"resourceVersion": rv}, "items": objs}
        if call.verb == "create":
            return 201, self.create_object(kind, call.data(), call.namespace, call)
        if call.verb == "deletecollection":
            for obj in self._select(call):
                self._delete(kind, obj, call.params, {}, call.dry_run)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        assert call.name is not None
        key = (call.namespace if kind.namespaced else None, call.name)
        current = self._store[kind.store].get(key)
        if call.verb == "patch" and current is None and "apply-patch" in call.headers.get("Content-Type", ""):
            obj = call.data()
            return 201, self.create_object(kind, obj, call.namespace, call)
        if current is None:
            raise ApiError(404, "NotFound", f'{kind.resource} "{call.name}" not found',
                           {"name": call.name, "group": kind.group, "kind": kind.plural})
        if call.verb == "delete":
            return 200, self._delete(kind, current, call.params, call.data(), call.dry_run)
        if sub == "scale":
            scale = self._scale(kind, current)
            if call.verb == "get":
                return 200, scale
            new_scale = self._changed(call, scale)
            replicas = (new_scale.get("spec") or {}).get("replicas")
            new = copy.deepcopy(current)
            _path_set(new, dict(kind.scale)["specReplicasPath"], replicas)
            return 200, self._scale(kind, self._update(kind, current, new, "", call))
        if call.verb == "get":
            return 200, self._out(kind, current) if not call.as_table else table(
                kind, [self._out(kind, current)], call.params.get("includeObject", "Metadata"), str(self._rv))
        return 200, self._update(kind, current, self._changed(call, current), sub, call)

    def _changed(self, call: Call, current: Obj) -> Obj:
        """The object as the client wants it after a PUT or PATCH (before server-side rules)."""
        data = call.data()
        if call.verb == "update":
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the body of a PUT must be an object")
            return data
        content_type = call.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(data, list):
                    raise PatchError("a JSON patch must be a list of operations")
                result = json_patch(current, data)
            elif content_type == "application/merge-patch+json":
                result = merge_patch(current, data)
            elif content_type == "application/strategic-merge-patch+json" and call.kind.crd is None:
                result = strategic_merge_patch(current, data)
            elif content_type == "application/apply-patch+yaml":
                result = merge_patch(current, data)
            else:
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                               "format - accepted media types include: application/json-patch+json, "
                               "application/merge-patch+json, application/apply-patch+yaml")
        except PatchError as error:
            raise ApiError(422, "Invalid", str(error)) from error
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "the patched object is not an object")
        return result

    # ---- the object store (synchronous: one event-loop step per write, so watches miss nothing) -----

    def kind_for(self, resource: str | Kind) -> Kind:
        """A Kind by plural, `plural.group`, or itself."""
        if isinstance(resource, Kind):
            return resource
        plural, _, group = resource.partition(".")
        for kind in self._kinds.values():
            if kind.plural == plural and kind.group == group:
                return kind
        raise KeyError(resource)

    def create_object(self, resource: str | Kind, obj: Obj, namespace: str | None = None,
                      call: Call | None = None) -> Obj:
        kind = self.kind_for(resource)
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the object must be a JSON object")
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if namespace and meta.get("namespace", namespace) != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                                                  "the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(random.choices(alphabet, k=5))
        if not meta.get("name"):
            raise self._invalid(kind, "", ["metadata.name: Required value: name or generateName is required"])
        key = (meta.get("namespace"), meta["name"])
        if key in self._store[kind.store]:
            raise ApiError(409, "AlreadyExists", f'{kind.resource} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": kind.group, "kind": kind.plural})
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        if kind.status and kind.crd is not None:
            obj.pop("status", None)
        self._defaults(kind, obj)
        obj = self._admit(kind, obj, None, call)
        if not (call and call.dry_run):
            self._commit(kind, "ADDED", obj, None)
        return self._out(kind, obj)

    def _update(self, kind: Kind, old: Obj, new: Obj, subresource: str, call: Call | None = None) -> Obj:
        meta, old_meta = new.get("metadata") or {}, old["metadata"]
        if meta.get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource} '
                           f'"{old_meta["name"]}": the object has been modified; please apply your changes '
                           "to the latest version and try again",
                           {"name": old_meta["name"], "group": kind.group, "kind": kind.plural})
        if subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        else:
            new = {**new, "apiVersion": old["apiVersion"], "kind": kind.kind}
            if kind.status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            fixed = {k: old_meta[k] for k in ("name", "namespace", "uid", "creationTimestamp", "generation",
                                              "resourceVersion", "deletionTimestamp",
                                              "deletionGracePeriodSeconds") if k in old_meta}
            new["metadata"] = {k: v for k, v in meta.items() if k not in fixed} | fixed
            if not new["metadata"].get("finalizers"):
                new["metadata"].pop("finalizers", None)
            if old_meta.get("deletionTimestamp") and set(new["metadata"].get("finalizers", [])) - set(
                    old_meta.get("finalizers", [])):
                raise self._invalid(kind, old_meta["name"], [
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being "
                    "deleted"])
        self._defaults(kind, new)
        new = self._admit(kind, new, old, call)
        if new == old:
            return self._out(kind, old)  # a no-op write changes nothing, as in Kubernetes
        if _content(new) != _content(old):
            new["metadata"] = {**new["metadata"], "generation": old_meta.get("generation", 1) + 1}
        if call and call.dry_run:
            return self._out(kind, new)
        gone = bool(new["metadata"].get("deletionTimestamp")) and not new["metadata"].get("finalizers")
        self._commit(kind, "DELETED" if gone else "MODIFIED", new, old)
        return self._out(kind, new)

    def _delete(self, kind: Kind, obj: Obj, params: dict[str, str], options: Obj, dry_run: bool) -> Obj:
        options = options if isinstance(options, dict) else {}
        meta = obj["metadata"]
        for field, value in (options.get("preconditions") or {}).items():
            if value is not None and meta.get(field) != value:
                raise ApiError(409, "Conflict", f"Precondition failed: {field} in precondition: {value}, "
                                                f"{field} in object meta: {meta.get(field)}")
        if dry_run or meta.get("deletionTimestamp"):
            return self._out(kind, obj)
        if meta.get("finalizers"):
            deleting = {"deletionTimestamp": now_iso(), "deletionGracePeriodSeconds": 0,
                        "generation": meta.get("generation", 1) + 1}
            new = {**obj, "metadata": {**meta, **deleting}}
            self._commit(kind, "MODIFIED", new, obj)
            return self._out(kind, new)
        orphan = (options.get("propagationPolicy") or params.get("propagationPolicy")) == "Orphan"
        self._commit(kind, "DELETED", copy.copy(obj), obj, orphan=orphan)
        return self._out(kind, obj)

    def _commit(self, kind: Kind, type_: str, obj: Obj, old: Obj | None, orphan: bool = False) -> None:
        self._rv += 1
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self._rv)}
        meta = obj["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if type_ == "DELETED":
            self._store[kind.store].pop(key, None)
        else:
            self._store[kind.store][key] = obj
        event = Event(self._rv, kind.store, type_, obj, old)
        if len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        self._log.append(event)
        for queue in self._watchers[kind.store]:
            queue.put_nowait(event)
        if kind.store == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._crd_changed(obj, type_)
        if type_ == "DELETED":
            if kind.store == ("", "namespaces"):
                for other in list(self._kinds.values()):
                    for child in [o for (ns, _), o in self._store[other.store].items() if ns == meta["name"]]:
                        self._delete(other, child, {}, {}, False)
            if not orphan:
                self._collect_garbage(meta["uid"])

    def _collect_garbage(self, uid: str) -> None:
        """Delete the dependents of a removed owner (or drop the dangling reference if others remain)."""
        stores = {kind.store: kind for kind in self._kinds.values()}
        for store, kind in stores.items():
            for obj in list(self._store[store].values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(ref.get("uid") == uid for ref in refs):
                    continue
                current = self._store[store].get((obj["metadata"].get("namespace"), obj["metadata"]["name"]))
                if current is not obj:
                    continue  # already deleted or changed by a cascade
                remaining = [ref for ref in refs if ref.get("uid") != uid]
                if remaining and any(self._uid_exists(ref.get("uid")) for ref in remaining):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = remaining
                    self._update(kind, obj, new, "")
                else:
                    self._delete(kind, obj, {}, {}, False)

    def _uid_exists(self, uid: str | None) -> bool:
        return any(o["metadata"].get("uid") == uid for objs in self._store.values() for o in objs.values())

    def _crd_changed(self, crd: Obj, type_: str) -> None:
        """(Re-)register the resources of a CRD object; when it goes, its objects go (finalizers or not)."""
        name = crd["metadata"]["name"]
        served = [k for k in self._kinds.values() if k.crd is not None and k.crd["metadata"]["name"] == name]
        if type_ == "DELETED" and served:
            for obj in list(self._store[served[0].store].values()):
                self._commit(served[0], "DELETED", copy.copy(obj), obj)
        for kind in served:
            del self._kinds[kind.group, kind.version, kind.plural]
        if type_ != "DELETED":
            for kind in kinds_from_crd(crd):
                self._register(kind)

    def _register(self, kind: Kind) -> None:
        self._kinds[kind.group, kind.version, kind.plural] = kind

    def _defaults(self, kind: Kind, obj: Obj) -> None:
        """Server-side defaults of the built-in kinds that clients look at."""
        if kind.store == ("", "namespaces"):
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            if not obj.get("status"):
                obj["status"] = {"phase": "Active"}
        elif kind.store == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            plain = obj.pop("stringData", {})
            encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in plain.items()}
            if encoded:
                obj["data"] = {**(obj.get("data") or {}), **encoded}
        elif kind.store == ("apiextensions.k8s.io", "customresourcedefinitions"):
            names = obj.get("spec", {}).get("names", {})
            conditions = [{"type": t, "status": "True", "reason": r, "message": m,
                           "lastTransitionTime": obj["metadata"].get("creationTimestamp")}
                          for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                                          ("Established", "InitialNamesAccepted", "the initial names have "
                                                                                  "been accepted"))]
            obj["status"] = {"acceptedNames": names, "conditions": conditions,
                             "storedVersions": [v["name"] for v in obj.get("spec", {}).get("versions", [])
                                                if v.get("storage")]}

    def _admit(self, kind: Kind, new: Obj, old: Obj | None, call: Call | None) -> Obj:
        """Metadata validation; schema pruning, defaulting and validation of custom resources."""
        problems = metadata_errors(kind.store, new["metadata"])
        if problems:
            raise self._invalid(kind, new["metadata"]["name"], problems)
        if kind.crd is not None and self.defaulter is not None:
            pruned = self.defaulter(kind.crd, new)
            unknown = unknown_fields(new, pruned)
            if unknown and call is not None and call.params.get("fieldValidation") == "Strict":
                fields = ", ".join(f'unknown field "{field}"' for field in unknown)
                raise ApiError(400, "BadRequest", f'{kind.kind} in version "{kind.version}" cannot be '
                               f"handled as a {kind.kind}: strict decoding error: {fields}")
            new = pruned
        if kind.crd is not None and self.validator is not None:
            messages = self.validator(kind.crd, new, old)
            if messages:
                raise self._invalid(kind, new["metadata"]["name"], messages)
        return new

    @staticmethod
    def _invalid(kind: Kind, name: str, messages: list[str]) -> ApiError:
        qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        causes = []
        for message in messages:  # "spec.x: Invalid value: ..." → field + message, as kubectl prints them
            where, _, text = message.partition(": ")
            causes.append({"reason": "FieldValueInvalid", "field": where, "message": text} if text and " " not in
                          where else {"reason": "FieldValueInvalid", "message": message})
        return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: ' + "; ".join(messages),
                        {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes})

    def _scale(self, kind: Kind, obj: Obj) -> Obj:
        paths, meta = dict(kind.scale), obj["metadata"]
        selector = _path_get(obj, paths["labelSelectorPath"]) if "labelSelectorPath" in paths else None
        status: Obj = {"replicas": _path_get(obj, paths.get("statusReplicasPath", ".status.replicas")) or 0}
        if selector:
            status["selector"] = selector
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": _path_get(obj, paths["specReplicasPath"]) or 0}, "status": status}

    @staticmethod
    def _out(kind: Kind, obj: Obj) -> Obj:
        return obj if obj.get("apiVersion") == kind.api_version else {**obj, "apiVersion": kind.api_version}

    def _matcher(self, call: Call) -> Callable[[Obj], bool]:
        labels = parse_selector(call.params.get("labelSelector", ""))
        fields = parse_selector(call.params.get("fieldSelector", ""))
        namespace, name = call.namespace if call.kind.namespaced else None, call.name

        def match(obj: Obj) -> bool:
            meta = obj["metadata"]
            return ((namespace is None or meta.get("namespace") == namespace)
                    and (name is None or meta["name"] == name)
                    and selects(labels, (meta.get("labels") or {}).get)
                    and selects(fields, lambda path: field(obj, path)))

        return match

    def _select(self, call: Call) -> list[Obj]:
        match = self._matcher(call)
        objs = [self._out(call.kind, o) for o in self._store[call.kind.store].values() if match(o)]
        return sorted(objs, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    # ---- watches --------------------------------------------------------------------------------

    async def _watch(self, raw: aiohttp.web.BaseRequest, call: Call) -> aiohttp.web.StreamResponse:
        kind, params = call.kind, call.params
        match = self._matcher(call)
        rv = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true" or rv in ("", "0")
        bookmarks = params.get("allowWatchBookmarks") == "true"
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        if not initial and not rv.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv!r}")
        if not initial and int(rv) < self._compacted_rv:  # as kube-apiserver: an ERROR event, not a 410
            gone = ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted_rv})")
            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw)
            await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
            await response.write_eof()
            return response

        # Synchronously: the backlog and the subscription, so that no event falls between them.
        backlog: list[tuple[str, Obj]]
        if initial:
            backlog = [("ADDED", o) for o in sorted(self._store[kind.store].values(),
                                                    key=lambda o: int(o["metadata"]["resourceVersion"]))
                       if match(o)]
        else:
            backlog = [e for e in (self._transform(event, match) for event in self._log
                                   if event.rv > int(rv) and event.store == kind.store) if e]
        queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the server is stopping
        self._watchers[kind.store].add(queue)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else float("inf")
        try:
            await response.prepare(raw)

            async def send(type_: str, obj: Obj) -> None:
                obj = self._out(kind, obj)
                if call.as_table and type_ != "BOOKMARK":
                    obj = table(kind, [obj], params.get("includeObject", "Metadata"),
                                obj["metadata"].get("resourceVersion", ""))
                await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

            for type_, obj in backlog:
                await send(type_, obj)
            if bookmarks and params.get("sendInitialEvents") == "true":
                await send("BOOKMARK", self._bookmark(kind, initial_end=True))
            next_bookmark = loop.time() + self.bookmark_interval
            while (remaining := deadline - loop.time()) > 0:
                # A floor on the wait: at 0, wait_for cancels queue.get() before it runs and a busy
                # watch spins without ever delivering its queued events.
                wait = min(remaining, max(0.05, next_bookmark - loop.time()) if bookmarks else 1.0, 1.0)
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    if raw.transport is None or raw.transport.is_closing():
                        break
                    if bookmarks and loop.time() >= next_bookmark and queue.empty():
                        await send("BOOKMARK", self._bookmark(kind))
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if event is None:
                    break
                transformed = self._transform(event, match)
                if transformed:
                    await send(*transformed)
            await response.write_eof()
        except ConnectionError:
            pass
        finally:
            self._watchers[kind.store].discard(queue)
        return response

    def close_watches(self) -> None:
        """End every open watch (clients reconnect), e.g. before the server stops."""
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    @staticmethod
    def _transform(event: Event, match: Callable[[Obj], bool]) -> tuple[str, Obj] | None:
        """An event as a watch with this selector sees it (entering → ADDED, leaving → DELETED)."""
        now = match(event.obj)
        before = event.old is not None and event.type == "MODIFIED" and match(event.old)
        if event.type == "MODIFIED" and now != before:
            return ("ADDED" if now else "DELETED"), event.obj
        return (event.type, event.obj) if now else None

    def _bookmark(self, kind: Kind, initial_end: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(self._rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}

    # ---- discovery (kmock's scaffold routes, answered from the registered kinds) -------------------

    def _served(self) -> dict[str, list[Kind]]:
        versions: dict[str, list[Kind]] = collections.defaultdict(list)
        for kind in self._kinds.values():
            versions[kind.api_version].append(kind)
        return versions

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return {"major": "1", "minor": "35", "gitVersion": "v1.35.0-emulated", "platform": "linux/amd64"}

    async def _serve_api(self, request: rendering.Request) -> rendering.Payload:
        address = {"clientCIDR": "0.0.0.0/0", "serverAddress": request.url.host}
        return {"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
                "serverAddressByClientCIDRs": [address]}

    def _group(self, group: str) -> Obj:
        versions = sorted({k.version for k in self._kinds.values() if k.group == group}, key=_version_key)
        if not versions:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource: {group}")
        # The storage version of a CRD is preferred, else the newest version.
        crds = [k.crd for k in self._kinds.values() if k.group == group and k.crd is not None]
        stored = [v["name"] for crd in crds[:1] for v in crd["spec"]["versions"] if v.get("storage")]
        preferred = stored[0] if stored else versions[-1]

        def entry(version: str) -> Obj:
            return {"groupVersion": f"{group}/{version}", "version": version}

        return {"name": group, "versions": [entry(v) for v in reversed(versions)],
                "preferredVersion": entry(preferred)}

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        groups = sorted({k.group for k in self._kinds.values() if k.group})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in groups]}

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.url.path.strip("/").split("/")[1]
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group(group)}

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        parts = request.url.path.strip("/").split("/")
        group_version = parts[1] if parts[0] == "api" else "/".join(parts[1:3])
        kinds = self._served().get(group_version)
        if not kinds:
            raise ApiError(404, "NotFound", f"the server has no resources in {group_version}")
        resources = []
        for kind in sorted(kinds, key=lambda k: k.plural):
            common = {"namespaced": kind.namespaced, "kind": kind.kind}
            resources.append({"name": kind.plural, "singularName": kind.singular, **common, "verbs": VERBS,
                              "shortNames": list(kind.short_names), "categories": list(kind.categories)})
            if kind.status:
                resources.append({"name": f"{kind.plural}/status", "singularName": "", **common,
                                  "verbs": ["get", "patch", "update"]})
            if kind.scale:
                resources.append({"name": f"{kind.plural}/scale", "singularName": "", **common,
                                  "kind": "Scale", "group": "autoscaling", "version": "v1",
                                  "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": resources}

    # OpenAPI v3, only as much as kubectl needs to use server-side field validation (`fieldValidation=Strict`)
    # instead of asking for schemas: a PATCH operation per kind that lists the parameter. No schemas.
    async def _serve_openapi_root(self, request: rendering.Request) -> rendering.Payload:
        served = self._served()
        digest = hashlib.sha256(repr(sorted(served)).encode()).hexdigest()[:16]
        return {"paths": {_gv_path(gv): {"serverRelativeURL": f"/openapi/v3/{_gv_path(gv)}?hash={digest}"}
                          for gv in served}}

    async def _serve_openapi_group_version(self, request: rendering.Request) -> rendering.Payload:
        path = request.url.path.removeprefix("/openapi/v3/")
        kinds = next((kinds for gv, kinds in self._served().items() if _gv_path(gv) == path), None)
        if not kinds:
            raise ApiError(404, "NotFound", f"no OpenAPI document for {path}")
        parameters = [{"name": name, "in": "query", "schema": {"type": "string"}}
                      for name in ("dryRun", "fieldManager", "fieldValidation")]
        paths = {}
        for kind in kinds:
            scope = "/namespaces/{namespace}" if kind.namespaced else ""
            gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
            paths[f"/{path}{scope}/{kind.plural}/{{name}}"] = {"patch": {
                "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch",
                "parameters": parameters, "responses": {"200": {"description": "OK"}}}}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "paths": paths}

    # ---- request accounting and fault injection ----------------------------------------------------------------------

    def request_counts(self) -> Obj:
        counts = [{"verb": v, "resource": r, "subresource": s, "count": n}
                  for (v, r, s), n in sorted(self.counts.items())]
        return {"counts": counts, "total": sum(self.counts.values()),
                "writes": sum(n for (v, _, _), n in self.counts.items() if v in WRITE_VERBS)}

    def reset_counts(self) -> None:
        self.counts.clear()

    async def _serve_reset(self, request: rendering.Request) -> rendering.Payload:
        self.reset_counts()
        return {"reset": True}

    async def _serve_add_fault(self, request: rendering.Request) -> rendering.Payload:
        """`{"verb": "patch", "resource": "inferencetiers", "subresource": "status", "code": 500, "count": 1}`:
        the next `count` matching requests fail with `code` (verb/resource/subresource left out match any)."""
        fault = {"code": 500, "count": 1, **(request.data or {})}
        self.faults.append(fault)
        return fault

    async def _serve_clear_faults(self, request: rendering.Request) -> rendering.Payload:
        self.faults.clear()
        return {"faults": []}

    def _inject_fault(self, verb: str, resource: str, subresource: str) -> None:
        for fault in self.faults:
            if all(fault.get(k) in (None, v) for k, v in
                   (("verb", verb), ("resource", resource), ("subresource", subresource))):
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                code = int(fault["code"])
                raise ApiError(code, http.HTTPStatus(code).phrase.replace(" ", ""),
                               fault.get("message", f"injected fault: {code} for {verb} {resource}"))


def unknown_fields(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths present (and not null) in `before` that pruning removed from `after`."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key, value in before.items():
            where = f"{path}.{key}" if path else key
            if key not in after:
                found += [where] if value is not None else []
            else:
                found += unknown_fields(value, after[key], where)
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after, strict=True))
        return [f for i, (b, a) in pairs for f in unknown_fields(b, a, f"{path}[{i}]")]
    return []


def _gv_path(api_version: str) -> str:
    return f"apis/{api_version}" if "/" in api_version else f"api/{api_version}"


def _content(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _version_key(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority, ascending: v1alpha1 < v1beta1 < v1 < v2alpha1 ..."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (-1, 0, 0)
    return int(match[1]), {"alpha": 0, "beta": 1, None: 2}[match[2]], int(match[3] or 0)


def default_admission() -> tuple[Validator | None, Defaulter | None]:
    """The project's CRD validator and defaulter (schema, CEL rules), if they are there."""
    try:
        from tiered_operator.api.crd_validation import apply_defaults, validate_object
    except ImportError:
        return None, None
    return validate_object, apply_defaults


# --------------------------------------------------------------------------------------------------
# `tiered cluster`


def write_kubeconfig(path: Path, url: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "tiered-emulator", "preferences": {},
        "clusters": [{"name": "tiered-emulator", "cluster": {"server": url}}],
        "users": [{"name": "tiered-emulator", "user": {"token": "emulator"}}],
        "contexts": [{"name": "tiered-emulator",
                      "context": {"cluster": "tiered-emulator", "user": "tiered-emulator",
                                  "namespace": "default"}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False))
    partial.replace(path)  # atomic: a reader polling for the file never sees half of it


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig to write (default: $TMPDIR/tiered-emulator-PORT.kubeconfig)")
    parser.add_argument("--crds", action="append", type=Path, metavar="PATH",
                        help="CRD file or directory, repeatable (default: crds/ and KubeRay's RayService)")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between BOOKMARKs")
    parser.add_argument("--no-validation", action="store_true",
                        help="do not default, prune or validate custom resources against their CRD schema")


def cluster(args: argparse.Namespace) -> int:
    from tiered_operator.cli import UsageError

    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise UsageError(f"--host must be a loopback address, not {args.host!r}")
    missing = [str(path) for path in args.crds or () if not path.exists()]
    if missing:
        raise UsageError(f"no such CRD file or directory: {', '.join(missing)}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, args.crds or DEFAULT_CRD_PATHS))
    return 0


async def _serve(args: argparse.Namespace, crd_paths: Iterable[Path]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    validator, defaulter = (None, None) if args.no_validation else default_admission()
    emulator = Emulator(crd_paths=crd_paths, validator=validator, defaulter=defaulter,
                        bookmark_interval=args.bookmark_interval)
    async with emulator, kmock.Server(emulator, host=args.host, port=args.port or None) as server:
        url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{server.port}"
        default = Path(tempfile.gettempdir()) / f"tiered-emulator-{server.port}.kubeconfig"
        kubeconfig = args.kubeconfig or default
        write_kubeconfig(kubeconfig, url)
        kinds = sorted({f"{k.kind}.{k.group}" for k in emulator._kinds.values() if k.crd is not None})
        print(f"tiered cluster: Kubernetes API emulator at {url} (custom resources: {', '.join(kinds)})\n"
              f"kubeconfig: {kubeconfig}\nexport KUBECONFIG={kubeconfig}", flush=True)
        await stop.wait()
        emulator.close_watches()
    print("tiered cluster: stopped", file=sys.stderr, flush=True)
