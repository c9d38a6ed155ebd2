"""One valid base object + one-field changes: the helper the schema tables and the fuzz test share."""

from __future__ import annotations

import copy
from typing import Any

DELETE = object()  # as a value: remove the field


def mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with one dotted path set (list indexes as numbers) or deleted."""
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj
