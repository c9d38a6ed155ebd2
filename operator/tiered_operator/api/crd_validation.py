"""Offline validation of custom resources against a CustomResourceDefinition, the way kube-apiserver does it.

Owns: choosing the CRD version's ``openAPIV3Schema``; the decode-time pipeline (prune unknown fields, drop
non-nullable nulls, apply ``default:`` values, top-down); the structural OpenAPI v3 checks (type, nullable,
enum, minimum/maximum and their exclusive forms, multipleOf, min/maxLength, pattern, min/maxItems,
min/maxProperties, required, properties, additionalProperties, items, ``x-kubernetes-int-or-string``,
``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-list-type`` set/map uniqueness, a few trivial
formats); and ``x-kubernetes-validations`` CEL rules at every schema level (``message``,
``messageExpression``, ``fieldPath``, ``reason``, transition rules with ``oldSelf``, ``optionalOldSelf``).
``schema_errors`` refuses a CRD whose schema a real apiserver cannot decode: ``exclusiveMinimum`` /
``exclusiveMaximum`` are booleans in apiextensions/v1 (OpenAPI v3.0: ``minimum: 0, exclusiveMinimum: true``),
so JSON Schema 2020's numeric form (``exclusiveMinimum: 0``) fails to decode; when validating objects, only
``exclusiveMinimum: true`` makes ``minimum`` exclusive, as in kube-openapi.
Messages are rendered like apiserver ``field.Error`` strings, e.g.
``spec.replicas: Invalid value: "object": replicas.min must be less than or equal to replicas.max``.
As in the apiserver, CEL rules are skipped when a "blocking" schema error exists (wrong type, enum,
required, too long, too many) and one ``<nil>: ...some validation rules were not checked...`` error stands
in for them.

Does not emulate: ObjectMeta validation (names, labels), ``allOf``/``anyOf``/``oneOf``/``not``, status or
scale subresource semantics, validation ratcheting on update, CEL cost limits, the CEL optional syntax
(``self.?x``, ``[?i]`` — ``compile_rules`` rejects them), Kubernetes CEL libraries beyond a few string/list
helpers (no quantity, url, ip, regex find), type-checking of rules before they run (a type error surfaces
at evaluation as the apiserver's runtime "no such overload" error). Pure: no I/O, no Kubernetes client.
CEL engine: ``common-expression-language`` (Rust ``cel`` bindings): cross-type numeric comparison like
Kubernetes, member-style extension functions, and static listing of the functions a rule calls.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import cel

__all__ = ["FieldError", "apply_defaults", "compile_rules", "field_errors", "schema_errors", "validate_object"]

Schema = Mapping[str, Any]
_MISSING: Any = object()
_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_BODY = {
    "FieldValueInvalid": "Invalid value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
}
_NO_VALUE = {"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"}
# schema errors after which the apiserver does not run CEL rules
_BLOCKING = {
    "FieldValueTypeInvalid",
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
}
_NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


@dataclass(frozen=True)
class FieldError:
    """One apiserver ``field.Error``: ``reason`` is the StatusCause reason (``FieldValueInvalid``, ...)."""

    reason: str
    field: str
    value: Any = None
    detail: str = ""

    @property
    def body(self) -> str:
        """The message without the field, as in a StatusCause ``message``."""
        text = _BODY[self.reason]
        if self.reason not in _NO_VALUE:
            text += f": {_go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def validate_object(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    old_obj: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> list[str]:
    """Error messages the apiserver would give for creating ``obj`` (updating ``old_obj`` to it if given)."""
    return [str(e) for e in field_errors(crd, obj, old_obj, version)]


def field_errors(
    crd: Mapping[str, Any],
    obj: Mapping[str, Any],
    old_obj: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> list[FieldError]:
    """Like ``validate_object`` but structured, for building a 422 Status with ``details.causes``."""
    schema = _schema(crd, version, obj)
    new = _decoded(schema, obj)
    old = _MISSING if old_obj is None else _decoded(schema, old_obj)
    errs: list[FieldError] = []
    _check(schema, new, "", errs)
    if any(e.reason in _BLOCKING for e in errs):
        errs.append(FieldError("FieldValueInvalid", "<nil>", None, _NOT_CHECKED))
    else:
        _check_rules(schema, new, old, "", errs)
    return list({str(e): e for e in errs}.values())  # the apiserver drops repeated messages


def apply_defaults(
    crd: Mapping[str, Any], obj: Mapping[str, Any], version: str | None = None
) -> dict[str, Any]:
    """A copy of ``obj`` as the apiserver would store it: unknown fields pruned, defaults applied."""
    return _decoded(_schema(crd, version, obj), obj)


def compile_rules(crd: Mapping[str, Any]) -> None:
    """Raise ValueError naming the version, schema path and expression of a CEL rule that does not compile."""
    for v in crd["spec"]["versions"]:
        root = f"versions[{v['name']}].openAPIV3Schema"
        for path, node in _walk_schema(v["schema"]["openAPIV3Schema"], root):
            for i, rule in enumerate(node.get("x-kubernetes-validations", ())):
                where = f"{path}.x-kubernetes-validations[{i}]"
                for key in ("rule", "messageExpression"):
                    try:
                        if key in rule:
                            _compiled(rule[key])
                    except ValueError as exc:
                        raise ValueError(f"{where}.{key}: {exc}") from None
                if rule.get("reason", "FieldValueInvalid") not in _RULE_REASONS:
                    raise ValueError(f"{where}.reason: unsupported reason {rule['reason']!r}")


_BOOLEAN_KEYWORDS = ("exclusiveMinimum", "exclusiveMaximum", "nullable", "uniqueItems")


def schema_errors(crd: Mapping[str, Any]) -> list[str]:
    """Why the apiserver cannot decode this CRD's schemas (JSONSchemaProps' boolean fields given non-booleans).

    Worded like its decode error, with the JSON path of the schema node (map keys shown in brackets).
    """
    errors = []
    for v in crd["spec"]["versions"]:
        root = f"spec.versions[{v['name']}].schema.openAPIV3Schema"
        for path, node in _walk_schema(v["schema"]["openAPIV3Schema"], root):
            for key in _BOOLEAN_KEYWORDS:
                if key in node and not isinstance(node[key], bool):
                    got = {"integer": "number"}.get(_json_type(node[key]), _json_type(node[key]))  # Go's words
                    errors.append(
                        f"CustomResourceDefinition in version \"v1\" cannot be handled as a "
                        f"CustomResourceDefinition: json: cannot unmarshal {got} into Go "
                        f"struct field JSONSchemaProps {path}.{key} of type bool"
                    )
    return errors


# --- schema selection and the decode pipeline -----------------------------------------------------------


def _schema(crd: Mapping[str, Any], version: str | None, obj: Mapping[str, Any]) -> Schema:
    versions = crd["spec"]["versions"]
    if version is None:
        wanted = str(obj.get("apiVersion", "")).rpartition("/")[2]
        names = [v["name"] for v in versions]
        storage = next((v["name"] for v in versions if v.get("storage")), names[0])
        version = wanted if wanted in names else storage
    for v in versions:
        if v["name"] == version:
            schema: Schema = v["schema"]["openAPIV3Schema"]
            return schema
    raise ValueError(f"CRD {crd.get('metadata', {}).get('name')} has no version {version!r}")


def _decoded(schema: Schema, obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _normalize(schema, copy.deepcopy(dict(obj)), root=True)
    return out


def _sub(schema: Schema, key: str) -> Schema | None:
    """The schema of property ``key`` of an object: a declared property, else additionalProperties."""
    extra = schema.get("additionalProperties")
    sub: Schema | None = schema.get("properties", {}).get(key, extra if isinstance(extra, Mapping) else None)
    return sub


def _normalize(schema: Schema, value: Any, root: bool = False) -> Any:
    """Prune unknown fields, drop non-nullable nulls, apply defaults, top-down (mutates and returns value)."""
    if isinstance(value, dict):
        keep_unknown = (
            schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") is True
        )
        keep_meta = root or schema.get("x-kubernetes-embedded-resource")
        for key in list(value):
            sub = _sub(schema, key)
            if keep_meta and key in _ROOT_KEEP:
                continue
            if sub is None:
                if not keep_unknown:
                    del value[key]
            elif value[key] is None and not sub.get("nullable"):
                del value[key]
            else:
                value[key] = _normalize(sub, value[key])
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = _normalize(sub, copy.deepcopy(sub["default"]))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        value[:] = [_normalize(schema["items"], item) for item in value]
    return value


# --- OpenAPI checks (kube-openapi messages) -------------------------------------------------------------


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "null")


def _formats() -> dict[str, Callable[[str], object]]:
    def date_time(s: str) -> object:
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", s, re.IGNORECASE):
            raise ValueError(s)
        return dt.datetime.fromisoformat(s.upper().replace("Z", "+00:00"))

    def date(s: str) -> object:
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", s):
            raise ValueError(s)
        return dt.date.fromisoformat(s)

    def uuid(s: str) -> object:
        if not re.fullmatch(r"[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}", s, re.IGNORECASE):
            raise ValueError(s)
        return s

    return {
        "date-time": date_time,
        "date": date,
        "uuid": uuid,
        "ipv4": ipaddress.IPv4Address,
        "ipv6": ipaddress.IPv6Address,
        "cidr": lambda s: ipaddress.ip_network(s, strict=False),
        "byte": lambda s: base64.b64decode(s, validate=True),
    }


_FORMATS = _formats()


def _check(schema: Schema, value: Any, path: str, errs: list[FieldError]) -> None:
    def invalid(val: Any, detail: str, reason: str = "FieldValueInvalid") -> None:
        errs.append(FieldError(reason, path, val, f"{path} in body {detail}"))

    actual = _json_type(value)
    expected = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema.get("type", "")
    if value is None:
        if expected and not schema.get("nullable"):
            invalid("null", f'must be of type {expected}: "null"', "FieldValueTypeInvalid")
        return
    if expected and not (
        actual in expected.split(",")
        or (expected == "number" and actual == "integer")
        or (expected == "integer" and actual == "number" and value.is_integer())
    ):
        invalid(actual, f'must be of type {expected}: "{actual}"', "FieldValueTypeInvalid")
        return

    if isinstance(value, str):
        fmt = _FORMATS.get(schema.get("format", ""))
        if fmt is not None:
            try:
                fmt(value)
            except (ValueError, binascii.Error):
                detail = f"must be of type {schema['format']}: {_go_value(value)}"
                invalid(value, detail, "FieldValueTypeInvalid")
                return
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            detail = f"may not be more than {_plural(schema['maxLength'], 'byte')}"
            errs.append(FieldError("FieldValueTooLong", path, value, detail))
        if "minLength" in schema and len(value) < schema["minLength"]:
            invalid(value, f"should be at least {schema['minLength']} chars long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            invalid(value, f"should match '{schema['pattern']}'")
    elif actual in ("integer", "number"):
        if "maximum" in schema:
            exclusive = schema.get("exclusiveMaximum") is True
            if value > schema["maximum"] or (exclusive and value == schema["maximum"]):
                bound = _go_num(schema["maximum"])
                invalid(value, f"should be less than {'' if exclusive else 'or equal to '}{bound}")
        if "minimum" in schema:
            exclusive = schema.get("exclusiveMinimum") is True
            if value < schema["minimum"] or (exclusive and value == schema["minimum"]):
                bound = _go_num(schema["minimum"])
                invalid(value, f"should be greater than {'' if exclusive else 'or equal to '}{bound}")
        if "multipleOf" in schema and (Decimal(repr(value)) % Decimal(repr(schema["multipleOf"]))) != 0:
            invalid(value, f"should be a multiple of {_go_num(schema['multipleOf'])}")
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                _check(items, item, f"{path}[{i}]", errs)
        if "minItems" in schema and len(value) < schema["minItems"]:
            invalid(len(value), f"should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(_too_many(path, len(value), schema["maxItems"]))
        _check_list_type(schema, value, path, errs)
    elif isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errs.append(FieldError("FieldValueRequired", _child(path, key)))
        for key, sub_value in value.items():
            sub = _sub(schema, key)
            if sub is not None:
                _check(sub, sub_value, _child(path, key), errs)
        if "minProperties" in schema and len(value) < schema["minProperties"]:  # the bound is the "value"
            invalid(schema["minProperties"], f"should have at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errs.append(_too_many(path, len(value), schema["maxProperties"]))

    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v)) for v in schema["enum"])
        errs.append(FieldError("FieldValueNotSupported", path, value, f"supported values: {allowed}"))


def _check_list_type(schema: Schema, value: list[Any], path: str, errs: list[FieldError]) -> None:
    kind = schema.get("x-kubernetes-list-type")
    if kind not in ("set", "map"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: list[Any] = []
    for i, item in enumerate(value):
        key = _map_key(item, keys) if kind == "map" else item
        if key is not None and key in seen:
            shown = _go_map(item, keys) if kind == "map" else key
            errs.append(FieldError("FieldValueDuplicate", f"{path}[{i}]", shown))
        seen.append(key)


def _map_key(item: Any, keys: list[str]) -> str | None:
    return json.dumps([item.get(k) for k in keys]) if isinstance(item, dict) else None


# --- CEL rules ------------------------------------------------------------------------------------------

_CEL_ERRORS = (KeyError, TypeError, RuntimeError, ValueError, IndexError, ZeroDivisionError, OverflowError)
_RULE_REASONS = ("FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate")


def _ascii_case(s: str, upper: bool) -> str:
    return "".join((c.upper() if upper else c.lower()) if c.isascii() else c for c in s)


# Kubernetes CEL library functions the engine lacks; member calls pass the receiver first.
_EXTENSIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": lambda s: _ascii_case(s, upper=False),
    "upperAscii": lambda s: _ascii_case(s, upper=True),
    "trim": lambda s: s.strip(),
    "split": lambda s, sep: s.split(sep),
    "join": lambda items, sep="": sep.join(items),
    "replace": lambda s, old, new: s.replace(old, new),
    "isSorted": lambda items: list(items) == sorted(items),
    "sum": lambda items: sum(items),
}
_BUILTINS = {
    *("size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string", "bytes"),
    *("bool", "dyn", "type", "duration", "timestamp", "getFullYear", "getMonth", "getDate", "getDayOfMonth"),
    *("getDayOfWeek", "getDayOfYear", "getHours", "getMinutes", "getSeconds", "getMilliseconds"),
    *("of", "none", "hasValue", "value", "orValue", "or", *_EXTENSIONS),
}


@lru_cache(maxsize=1024)
def _compiled(expression: str) -> cel.Program:
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        raise ValueError(f"CEL {expression!r} does not compile: {exc}") from None
    unknown = [f for f in program.functions() if f.isidentifier() and f[0] != "_" and f not in _BUILTINS]
    if unknown:
        raise ValueError(f"CEL {expression!r} calls undeclared function(s) {', '.join(unknown)}")
    return program


def _walk_schema(schema: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk_schema(sub, f"{path}.properties[{key}]")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from _walk_schema(schema[key], f"{path}.{key}")


def _cel_value(schema: Schema, value: Any) -> Any:
    """JSON value typed by the schema: ``number`` is always a double, an integral ``integer`` an int."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "integer" and isinstance(value, float):
        return int(value)
    if isinstance(value, dict):
        return {k: _cel_value(_sub(schema, k) or {}, v) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [_cel_value(items if isinstance(items, Mapping) else {}, v) for v in value]
    return value


def _check_rules(schema: Schema, value: Any, old: Any, path: str, errs: list[FieldError]) -> None:
    if old is not _MISSING and value == old:
        return  # ratcheting (CRDValidationRatcheting, on since 1.30): an unchanged value is not re-checked
    for rule in schema.get("x-kubernetes-validations", ()):
        error = _eval_rule(schema, rule, value, old, path)
        if error is not None:
            errs.append(error)
    if isinstance(value, dict):
        for key, sub_value in value.items():
            sub = _sub(schema, key)
            if sub is not None:
                sub_old = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                _check_rules(sub, sub_value, sub_old, _child(path, key), errs)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        keys = schema.get("x-kubernetes-list-map-keys", [])
        old_items: dict[str | None, Any] = {}
        if schema.get("x-kubernetes-list-type") == "map" and isinstance(old, list):
            old_items = {_map_key(o, keys): o for o in old}
        for i, item in enumerate(value):
            item_old = old_items.get(_map_key(item, keys), _MISSING) if old_items else _MISSING
            _check_rules(schema["items"], item, item_old, f"{path}[{i}]", errs)


def _eval_rule(schema: Schema, rule: Mapping[str, Any], value: Any, old: Any, path: str) -> FieldError | None:
    program = _compiled(rule["rule"])
    type_name = schema.get("type", "")
    variables = {"self": _cel_value(schema, value)}
    if "oldSelf" in program.variables():
        if rule.get("optionalOldSelf"):
            none = old is _MISSING
            variables["oldSelf"] = (
                cel.OptionalValue.none() if none else cel.OptionalValue.of(_cel_value(schema, old))
            )
        elif old is _MISSING:
            return None  # transition rules run only on update, where an old value correlates
        else:
            variables["oldSelf"] = _cel_value(schema, old)
    context = cel.Context(variables=variables, functions=_EXTENSIONS)
    what = str(rule.get("message", "")).strip() or str(rule["rule"]).strip()
    try:
        result = program.execute(context)
    except _CEL_ERRORS as exc:  # the apiserver reports runtime errors at the rule's own path
        if isinstance(exc, KeyError):
            detail = f"no such key: {exc.args[0]} evaluating rule: {what}"
        elif str(exc).lower().startswith("no such overload"):
            detail = (
                "'no such overload': call arguments did not match a supported operator, function or macro "
                f"signature for rule: {what}"
            )
        else:
            detail = f"{exc} evaluating rule: {what}"
        return FieldError("FieldValueInvalid", path or "<nil>", type_name, detail)
    if result is True:
        return None
    message = str(rule.get("message", "")).strip() or f"failed rule: {str(rule['rule']).strip()}"
    if "messageExpression" in rule:
        try:
            text = _compiled(rule["messageExpression"]).execute(context)
        except _CEL_ERRORS:
            text = None  # the apiserver logs the failure and falls back to the message
        if isinstance(text, str) and text.strip():
            message = text.strip()
    if "fieldPath" in rule:  # ".a.b" or ".a['key']", relative to self
        rel = re.sub(r"\['([^']*)'\]", r"[\1]", rule["fieldPath"])
        path = (path + rel).lstrip(".")
    path = path or "<nil>"
    reason = rule.get("reason", "FieldValueInvalid")
    if reason in ("FieldValueForbidden", "FieldValueRequired"):
        return FieldError(reason, path, detail=message)
    if reason == "FieldValueDuplicate":
        return FieldError(reason, path, type_name)
    return FieldError("FieldValueInvalid", path, type_name, message)


# --- Go-style value rendering ---------------------------------------------------------------------------


class _Verbatim(str):
    """A value printed as is."""


def _go_map(item: Mapping[str, Any], keys: list[str]) -> _Verbatim:
    """Go's ``%#v`` of a list-map key (``map[string]interface {}{...}``), as in Duplicate errors."""
    fields = ", ".join(f'"{k}":{_go_value(item[k])}' for k in sorted(keys) if k in item)
    return _Verbatim("map[string]interface {}{" + fields + "}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _too_many(path: str, actual: int, limit: int) -> FieldError:
    return FieldError("FieldValueTooMany", path, actual, f"must have at most {_plural(limit, 'item')}")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _go_num(value: float) -> str:
    """Go's ``%v`` of a float64: shortest digits, exponent form when the exponent is < -4 or >= 6."""
    if value == 0:
        return "0"
    sign, digits, exp = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exp, int)
    e10 = len(digits) + exp - 1
    if -4 <= e10 < 6:
        return format(Decimal(repr(float(value))).normalize(), "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' * sign}{mantissa}e{e10:+03d}"


def _go_value(value: Any) -> str:
    if isinstance(value, _Verbatim):
        return str(value)
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_num(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
