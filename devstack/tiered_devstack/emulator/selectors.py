"""Label and field selectors, and the JSONPath subset printer columns and scale paths use.

Pure functions on plain objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tiered_devstack.emulator.kinds import ApiError, Obj

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


def field_value(obj: Obj, path: str) -> str | None:
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
                    if isinstance(item, dict) and field_value(item, match["fkey"]) == match["fvalue"]:
                        found.append(item)
            elif isinstance(value, dict):  # [*] or .*
                found += list(value.values())
            elif isinstance(value, list):
                found += value
        values = found
    return values


def path_get(obj: Obj, path: str) -> Any:
    found = jsonpath(obj, path)
    return found[0] if found else None


def path_set(obj: Obj, path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value
