"""Label and field selectors, as ``labelSelector=`` and ``fieldSelector=`` of list and watch calls.

Called by :mod:`.apiserver` for LIST, WATCH and DELETE-collection requests. The grammar is the
one of ``k8s.io/apimachinery/pkg/labels`` and ``.../fields``:

* labels: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``,
  ``k>1``, ``k<1``; comma-separated terms are ANDed.
* fields: ``path=v``, ``path==v``, ``path!=v`` with ``\\,``, ``\\=`` and ``\\\\`` escapes;
  which paths are allowed depends on the resource (see :func:`.resources.field_path`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any


class SelectorError(ValueError):
    """The selector does not parse (400 on the API)."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_TERM = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_BINARY_TERM = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[-A-Za-z0-9_.]*)$")
_KEY_TERM = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


def parse_labels(text: str | None) -> list[Requirement]:
    """Parse a label selector; an empty one selects everything."""
    requirements: list[Requirement] = []
    for term in _split_terms(text or ""):
        if match := _SET_TERM.match(term):
            values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(Requirement(match["key"], match["op"], values))
        elif match := _BINARY_TERM.match(term):
            op = {"==": "=", "=": "=", "!=": "!=", ">": "gt", "<": "lt"}[match["op"]]
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", match["value"]):
                raise SelectorError("unable to parse requirement: for 'gt', 'lt' operators, the value must be "
                                    f"an integer: {term!r}")
            requirements.append(Requirement(match["key"], op, (match["value"],)))
        elif match := _KEY_TERM.match(term):
            requirements.append(Requirement(match["key"], "!" if match["neg"] else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return requirements


def match_labels(requirements: list[Requirement], labels: Mapping[str, Any] | None) -> bool:
    labels = labels or {}
    return all(_match_label(req, labels) for req in requirements)


def _match_label(req: Requirement, labels: Mapping[str, Any]) -> bool:
    present = req.key in labels
    value = str(labels.get(req.key, ""))
    if req.operator == "exists":
        return present
    if req.operator == "!":
        return not present
    if req.operator == "=":
        return present and value == req.values[0]
    if req.operator == "!=":
        return not present or value != req.values[0]
    if req.operator == "in":
        return present and value in req.values
    if req.operator == "notin":
        return not present or value not in req.values
    number = _int(value) if present else None
    if number is None:
        return False
    return number > int(req.values[0]) if req.operator == "gt" else number < int(req.values[0])


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _split_escaped(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current = ""
    escaped = False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_fields(text: str | None) -> list[Requirement]:
    """Parse a field selector into ``(path, "=" | "!=", value)`` requirements."""
    requirements: list[Requirement] = []
    for term in _split_escaped(text or "", ","):
        if not term.strip():
            continue
        match = re.match(r"^(?P<key>[^!=]+?)\s*(?P<op>==|!=|=)(?P<value>.*)$", term)
        if not match:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        op = "!=" if match["op"] == "!=" else "="
        requirements.append(Requirement(match["key"].strip(), op, (_unescape(match["value"]),)))
    return requirements


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted path's value, "" when absent (as the field-selector index does)."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return ""
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    if node is None or isinstance(node, (Mapping, list)):
        return ""
    return str(node)


def match_fields(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    for req in requirements:
        value = field_value(obj, req.key)
        if (value == req.values[0]) != (req.operator == "="):
            return False
    return True
