"""Admission of custom resources: the CRD's OpenAPI defaults and validation, as 422 ``Invalid``.

:mod:`.apiserver` calls the configured :data:`Admission` on every create, update and patch of
a custom resource (main resource and ``/status``). The default, :func:`schema_admission`, is
``agentrun.schema`` (defaults, structural schema, unknown fields, CEL rules), imported lazily
so that the emulator works, without validation, where that module is absent. Tests and
other callers can pass any callable with the same signature.

Errors on fields whose value did not change in an update are dropped (validation ratcheting,
as kube-apiserver does since 1.30), so a status write never fails because of the spec.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agentrun_local.emulator import errors

logger = logging.getLogger(__name__)


class FieldError(Protocol):
    """What a validator reports: the dotted field (``spec.agent.maxIterations``) and the message."""

    @property
    def field(self) -> str: ...

    @property
    def message(self) -> str: ...


#: ``(crd, obj) -> (defaulted obj, errors)``. ``obj`` is the whole object as written.
Admission = Callable[[Mapping[str, Any], dict[str, Any]], tuple[dict[str, Any], Sequence[FieldError]]]

_warned = False


def schema_admission(crd: Mapping[str, Any], obj: dict[str, Any], old: Mapping[str, Any] | None = None
                     ) -> tuple[dict[str, Any], Sequence[FieldError]]:
    """Defaults and validation by ``agentrun.schema`` (no-op, with one warning, if it is missing).

    ``old`` is the stored object on an update: values it leaves unchanged skip the CEL rules
    (validation ratcheting). Neither ``crd`` nor ``obj`` is modified.
    """
    global _warned
    try:
        schema = importlib.import_module("agentrun.schema")
    except ModuleNotFoundError as exc:
        if exc.name != "agentrun.schema":
            raise
        if not _warned:
            _warned = True
            logger.warning("agentrun.schema is not available: custom resources are admitted unvalidated")
        return obj, []
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    defaulted: dict[str, Any] = schema.apply_defaults(crd, obj, version)
    return defaulted, list(schema.validate(crd, defaulted, version, old=old))


_REASONS = (
    ("Required value", "FieldValueRequired"),
    ("Unsupported value", "FieldValueNotSupported"),
    ("Forbidden", "FieldValueForbidden"),
    ("Too long", "FieldValueTooLong"),
    ("Too many", "FieldValueTooMany"),
    ("Duplicate value", "FieldValueDuplicate"),
    ("Invalid value", "FieldValueInvalid"),
)


def reason(error: FieldError) -> str:
    """The ``causes[].reason`` of kube-apiserver for this error (from its type, else its wording)."""
    for attribute in ("reason", "type"):
        value = getattr(error, attribute, None)
        if isinstance(value, str) and value.startswith("FieldValue"):
            return value
    for prefix, name in _REASONS:
        if error.message.startswith(prefix):
            return name
    return "FieldValueInvalid"


_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]+)\]")


def value_at(obj: Any, field: str) -> tuple[bool, Any]:
    """``(found, value)`` at a path such as ``spec.steps[2].name`` or ``spec.labels[key]``."""
    node = obj
    for name, index in _SEGMENT.findall(field):
        key: Any = name or index
        if isinstance(node, list):
            try:
                key = int(key)
            except ValueError:
                return False, None
            if not -len(node) <= key < len(node):
                return False, None
        elif not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def is_unknown_field(problem: FieldError) -> bool:
    """An ``unknown field "spec.x"`` report: pruned (with a warning), or 400 under fieldValidation=Strict."""
    return problem.message.startswith('unknown field "')


def remove_at(obj: Any, field: str) -> None:
    """Delete the value at a path such as ``spec.steps[2].extra`` or ``spec.labels[key]``, if present."""
    segments = _SEGMENT.findall(field)
    node = obj
    for position, (name, index) in enumerate(segments):
        key: Any = name if name else index
        if isinstance(node, list):
            try:
                key = int(key)
            except ValueError:
                return
            if not -len(node) <= key < len(node):
                return
        elif not isinstance(node, Mapping) or key not in node:
            return
        if position == len(segments) - 1:
            del node[key]
        else:
            node = node[key]


def ratchet(problems: Sequence[FieldError], old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[FieldError]:
    """Drop errors about fields that an update left unchanged.

    A missing field (``Required value``) is judged by its nearest existing parent.
    """
    if old is None:
        return list(problems)
    kept: list[FieldError] = []
    for problem in problems:
        if not _unchanged(old, new, problem.field):
            kept.append(problem)
    return kept


def _unchanged(old: Mapping[str, Any], new: Mapping[str, Any], field: str) -> bool:
    segments = ["[" + index + "]" if index else name for name, index in _SEGMENT.findall(field)]
    while segments:
        path = ".".join(segments).replace(".[", "[")
        found_old, before = value_at(old, path)
        found_new, after = value_at(new, path)
        if found_old and found_new:
            return bool(before == after)
        if found_old != found_new:
            return False
        segments.pop()
    return False


def invalid(kind: str, group: str, name: str, problems: Sequence[FieldError]) -> errors.ApiError:
    return errors.invalid(kind, group, name, [(p.field, p.message, reason(p)) for p in problems])
