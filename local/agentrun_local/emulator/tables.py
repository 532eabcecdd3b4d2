"""Server-side printing: ``meta.k8s.io/v1 Table`` responses for ``kubectl get``.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the
columns the server chose. :mod:`.apiserver` calls :func:`wanted` to detect that and
:func:`table` to render lists and watch events. The columns are NAME plus the CRD's
``additionalPrinterColumns`` (or AGE when a type declares none), with the cells computed the
way apiextensions-apiserver does: a JSONPath subset (``.a.b``, ``[0]``, ``[*]``,
``[?(@.k=="v")]``) and per-type formatting (``date`` becomes an age such as ``5m3s``).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agentrun_local.emulator import resources

NAME_COLUMN = {
    "name": "Name", "type": "string", "format": "name", "priority": 0,
    "description": "Name must be unique within a namespace. More info: "
                   "http://kubernetes.io/docs/user-guide/identifiers#names",
}
AGE_COLUMN = {
    "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
}


def wanted(accept: str | None) -> str | None:
    """The Table API version (``v1``/``v1beta1``) the client prefers, or None for plain JSON."""
    for media in (accept or "").split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
        if media.split(";")[0].strip() in ("application/json", "*/*", "application/*") and "as" not in params:
            return None
    return None


def columns(rtype: resources.ResourceType) -> list[Mapping[str, Any]]:
    return list(rtype.printer_columns) if rtype.printer_columns else [AGE_COLUMN]


def column_definitions(rtype: resources.ResourceType) -> list[dict[str, Any]]:
    definitions = [dict(NAME_COLUMN)]
    for column in columns(rtype):
        definitions.append({
            "name": column["name"],
            "type": column.get("type", "string"),
            "format": column.get("format", ""),
            "description": column.get("description", ""),
            "priority": int(column.get("priority", 0)),
        })
    return definitions


def row(rtype: resources.ResourceType, obj: Mapping[str, Any], include: str,
        now: datetime.datetime | None = None) -> dict[str, Any]:
    """One table row; ``include`` is the ``includeObject`` parameter: None, Metadata or Object."""
    cells: list[Any] = [obj.get("metadata", {}).get("name")]
    for column in columns(rtype):
        found = jsonpath(obj, column.get("jsonPath", ""))
        cells.append(cell(column.get("type", "string"), found[0], now) if found else None)
    result: dict[str, Any] = {"cells": cells}
    if include == "Object":
        result["object"] = obj
    elif include != "None":
        result["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj.get("metadata", {})}
    return result


def table(rtype: resources.ResourceType, objs: Sequence[Mapping[str, Any]], *, version: str = "v1",
          resource_version: str | None = None, include: str = "Metadata", headers: bool = True,
          extra_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    metadata: dict[str, Any] = dict(extra_metadata or {})
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": metadata,
        "columnDefinitions": column_definitions(rtype) if headers else [],
        "rows": [row(rtype, obj, include, now) for obj in objs],
    }


def cell(kind: str, value: Any, now: datetime.datetime | None = None) -> Any:
    """A cell as apiextensions-apiserver formats it for a column of this type."""
    if kind == "date":
        if not isinstance(value, str):
            return "<invalid>"
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        now = now or datetime.datetime.now(datetime.UTC)
        return human_duration((now - moment).total_seconds())
    if kind == "integer":
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "number":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def human_duration(seconds: float) -> str:
    """Go's ``k8s.io/apimachinery/pkg/util/duration.HumanDuration``: ``45s``, ``5m3s``, ``3h``, ``2d4h``."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


_TOKEN = re.compile(
    r"""\.(?P<field>(?:\\.|[^.\[\\])+)"""
    r"""|\[(?P<index>-?\d+|\*)\]"""
    r"""|\[['"](?P<quoted>[^'"]+)['"]\]"""
    r"""|\[\?\(@\.(?P<fkey>[\w.\-]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\s*\)\]"""
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate the JSONPath subset printer columns use; returns all matches (possibly none)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    path = path.lstrip("$")
    nodes: list[Any] = [obj]
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if not match:
            return []
        position = match.end()
        found: list[Any] = []
        for node in nodes:
            if match["field"] is not None or match["quoted"] is not None:
                name = match["quoted"] or re.sub(r"\\(.)", r"\1", match["field"])
                if name == "*" and isinstance(node, Mapping):
                    found.extend(node.values())
                elif isinstance(node, Mapping) and name in node:
                    found.append(node[name])
            elif match["index"] is not None and isinstance(node, list):
                if match["index"] == "*":
                    found.extend(node)
                elif -len(node) <= int(match["index"]) < len(node):
                    found.append(node[int(match["index"])])
            elif match["fkey"] is not None and isinstance(node, list):
                expected = match["fval"].strip("'\"")
                for item in node:
                    actual = _get(item, match["fkey"])
                    same = actual is not None and _text(actual) == expected
                    if same == (match["fop"] == "=="):
                        found.append(item)
        nodes = found
    return nodes


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
