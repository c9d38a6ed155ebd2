"""Patches as kube-apiserver applies them: JSON merge patch, strategic merge patch, JSON patch.

Pure functions on plain values; they return new values and never modify their input.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tiered_devstack.emulator.kinds import Obj


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
