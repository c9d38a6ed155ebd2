"""kubectl's protobuf request bodies, decoded just enough for the kinds its `create` generators send.

Pure.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from tiered_devstack.emulator.kinds import ApiError, Obj

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
