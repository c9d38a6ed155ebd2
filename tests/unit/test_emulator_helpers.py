"""The emulator's pure helpers: patches, selectors, JSONPath, paths, protobuf, tables."""

from __future__ import annotations

from typing import Any

import pytest
from tiered_devstack.emulator import (
    ApiError,
    Kind,
    PatchError,
    decode_protobuf,
    json_patch,
    jsonpath,
    merge_patch,
    metadata_errors,
    parse_path,
    parse_selector,
    selects,
    strategic_merge_patch,
    table,
)

OBJ = {"metadata": {"name": "a", "labels": {"tier": "gold"}},
       "spec": {"x": {"y": 1}, "flag": True},
       "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Bursting", "status": "False"}]}}


@pytest.mark.parametrize(("target", "patch", "expected"), [
    ({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 3}}, {"a": 1, "b": {"d": 3}}),
    ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ({"a": 1}, {"a": {"b": 1}}, {"a": {"b": 1}}),
])
def test_merge_patch(target: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(target, patch) == expected


def test_json_patch_ops_and_failed_test() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    ops = [{"op": "add", "path": "/a/-", "value": 3}, {"op": "remove", "path": "/b/c"},
           {"op": "copy", "from": "/a/0", "path": "/b/d"}, {"op": "move", "from": "/a/1", "path": "/e"},
           {"op": "replace", "path": "/a/0", "value": 9}, {"op": "test", "path": "/e", "value": 2}]
    assert json_patch(doc, ops) == {"a": [9, 3], "b": {"d": 1}, "e": 2}
    assert doc == {"a": [1, 2], "b": {"c": 1}}  # unchanged
    for bad in ([{"op": "test", "path": "/b/c", "value": 2}], [{"op": "remove", "path": "/x"}],
                [{"op": "replace", "path": "/a/5", "value": 1}]):
        with pytest.raises(PatchError):
            json_patch(doc, bad)


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    live = {"containers": [{"name": "a", "image": "1", "ports": [{"containerPort": 80}]}, {"name": "b"}],
            "finalizers": ["x"], "args": ["--one"]}
    patch = {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
             "containers": [{"name": "a", "image": "2"}, {"name": "c", "$patch": "delete"}],
             "finalizers": ["y"], "args": ["--two"]}
    assert strategic_merge_patch(live, patch) == {
        "containers": [{"name": "b"}, {"name": "a", "image": "2", "ports": [{"containerPort": 80}]}],
        "finalizers": ["x", "y"], "args": ["--two"]}
    assert strategic_merge_patch(live, {"$deleteFromPrimitiveList/finalizers": ["x"]})["finalizers"] == []


@pytest.mark.parametrize(("selector", "selected"), [
    ("", True), ("tier=gold", True), ("tier==gold", True), ("tier!=gold", False), ("tier in (a, gold)", True),
    ("tier notin (gold)", False), ("tier", True), ("!tier", False), ("other!=x", True), ("tier=gold,!other", True),
])
def test_label_selectors(selector: str, selected: bool) -> None:
    assert selects(parse_selector(selector), OBJ["metadata"]["labels"].get) is selected


def test_bad_selector_is_400() -> None:
    with pytest.raises(ApiError) as error:
        parse_selector("tier in gold")
    assert error.value.code == 400


@pytest.mark.parametrize(("expr", "expected"), [
    (".spec.x.y", [1]),
    ("{.spec.flag}", [True]),
    ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
    (".status.conditions[1].type", ["Bursting"]),
    (".status.conditions[*].type", ["Ready", "Bursting"]),
    (".spec.missing", []),
])
def test_jsonpath(expr: str, expected: list[Any]) -> None:
    assert jsonpath(OBJ, expr) == expected


@pytest.mark.parametrize(("path", "parsed"), [
    ("/api/v1/namespaces", ("", "v1", None, "namespaces", None, "")),
    ("/api/v1/namespaces/ns1", ("", "v1", None, "namespaces", "ns1", "")),
    ("/api/v1/namespaces/ns1/status", ("", "v1", None, "namespaces", "ns1", "status")),
    ("/api/v1/namespaces/ns1/configmaps/c", ("", "v1", "ns1", "configmaps", "c", "")),
    ("/apis/tiered.dev/v1alpha1/namespaces/d/inferencetiers/t/scale",
     ("tiered.dev", "v1alpha1", "d", "inferencetiers", "t", "scale")),
    ("/apis/tiered.dev/v1alpha1", None),
    ("/version", None),
])
def test_parse_path(path: str, parsed: Any) -> None:
    assert parse_path(path) == parsed


def test_decode_protobuf_configmap() -> None:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    meta = field(1, b"cm") + field(3, b"ns") + field(2, b"")
    entry = field(1, b"k") + field(2, b"v")
    raw = field(1, meta) + field(2, entry)
    body = b"k8s\x00" + field(1, field(1, b"v1") + field(2, b"ConfigMap")) + field(2, raw)
    assert decode_protobuf(body) == {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "cm", "namespace": "ns"}, "data": {"k": "v"}}


def test_table_columns() -> None:
    kind = Kind("t.dev", "v1", "things", "Thing", columns=(
        {"name": "X", "type": "integer", "jsonPath": ".spec.x.y"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}))
    obj = {**OBJ, "metadata": {**OBJ["metadata"], "creationTimestamp": "2020-01-01T00:00:00Z"}}
    result = table(kind, [obj], "Metadata", "7")
    assert [c["name"] for c in result["columnDefinitions"]] == ["Name", "X", "Ready", "Age"]
    assert result["rows"][0]["cells"][:3] == ["a", 1, "True"]
    assert result["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


@pytest.mark.parametrize(("store", "meta", "field"), [
    (("", "configmaps"), {"name": "a.b-c"}, None),
    (("", "configmaps"), {"name": "Bad"}, "metadata.name"),
    (("", "services"), {"name": "a.b"}, "metadata.name"),  # services and namespaces take DNS labels
    (("", "namespaces"), {"name": "x" * 64}, "metadata.name"),
    (("", "configmaps"), {"name": "a", "labels": {"app.kubernetes.io/name": "web_1"}}, None),
    (("", "configmaps"), {"name": "a", "labels": {"a": "x" * 64}}, "metadata.labels"),
    (("", "configmaps"), {"name": "a", "labels": {"-a": "x"}}, "metadata.labels"),
    (("", "configmaps"), {"name": "a", "annotations": {"a": "x" * 300_000}}, "metadata.annotations"),
])
def test_metadata_errors(store: tuple[str, str], meta: dict[str, Any], field: str | None) -> None:
    errors = metadata_errors(store, meta)
    assert [e.split(":")[0] for e in errors] == ([field] if field else [])
