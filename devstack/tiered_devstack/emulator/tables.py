"""`meta.k8s.io/v1 Table`s for `kubectl get`: NAME, a CRD's printer columns, AGE (as kubectl prints ages).

Pure (apart from reading the clock for ages).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from tiered_devstack.emulator.kinds import Kind, Obj
from tiered_devstack.emulator.selectors import jsonpath


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
