"""The `Emulator`: kube-apiserver's HTTP verbs over an in-memory store, watches, discovery, admission.

Owns the object store, the event log that watches replay from, request counters and injected faults.
Must not: leave loopback (the caller picks the address), or import the operator's modules (admission
comes in as the `validator`/`defaulter` arguments; `default_admission` finds the project's).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import hashlib
import http
import json
import os
import random
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps, rendering

from tiered_devstack.emulator.kinds import (
    BUILTIN_KINDS,
    EVENT_LOG_SIZE,
    MAX_BODY,
    RAYSERVICE_FALLBACK_CRD,
    VERBS,
    WRITE_VERBS,
    ApiError,
    Defaulter,
    Kind,
    Obj,
    Validator,
    kinds_from_crd,
    load_crds,
)
from tiered_devstack.emulator.meta import metadata_errors, now_iso
from tiered_devstack.emulator.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tiered_devstack.emulator.protobuf import PROTOBUF_MAGIC, decode_protobuf
from tiered_devstack.emulator.selectors import field_value, parse_selector, path_get, path_set, selects
from tiered_devstack.emulator.tables import table


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
    # (crd) -> why kube-apiserver could not decode a CRD object written over the API (e.g. a numeric
    # `exclusiveMinimum`); the CRDs loaded at start-up are not checked.
    crd_checker: Callable[[Obj], list[str]] | None = None
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
            path_set(new, dict(kind.scale)["specReplicasPath"], replicas)
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
        if kind.store == CRD_STORE and self.crd_checker is not None and (undecodable := self.crd_checker(new)):
            raise ApiError(400, "BadRequest", undecodable[0])
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
        selector = path_get(obj, paths["labelSelectorPath"]) if "labelSelectorPath" in paths else None
        status: Obj = {"replicas": path_get(obj, paths.get("statusReplicasPath", ".status.replicas")) or 0}
        if selector:
            status["selector"] = selector
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": path_get(obj, paths["specReplicasPath"]) or 0}, "status": status}

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
                    and selects(fields, lambda path: field_value(obj, path)))

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


CRD_STORE = ("apiextensions.k8s.io", "customresourcedefinitions")


def default_crd_checker() -> Callable[[Obj], list[str]] | None:
    """The project's check that a CRD's schemas decode as apiextensions/v1 (if it is there)."""
    try:
        from tiered_operator.api.crd_validation import schema_errors
    except ImportError:
        return None
    checker: Callable[[Obj], list[str]] = schema_errors
    return checker


def default_admission() -> tuple[Validator | None, Defaulter | None]:
    """The project's CRD validator and defaulter (schema, CEL rules), if they are there."""
    try:
        from tiered_operator.api.crd_validation import apply_defaults, validate_object
    except ImportError:
        return None, None
    return validate_object, apply_defaults
