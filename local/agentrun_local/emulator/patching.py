"""The four PATCH flavours of the Kubernetes API, applied to plain JSON objects.

Called by :mod:`.apiserver` for ``PATCH`` requests, chosen by their ``Content-Type``:

* ``application/merge-patch+json``: RFC 7386 (``null`` deletes a key, lists are replaced).
* ``application/json-patch+json``: RFC 6902, via the ``jsonpatch`` package (kopf's and kmock's
  own dependency). A failing ``test`` operation raises :class:`PatchTestFailed`.
* ``application/strategic-merge-patch+json``: Kubernetes' strategic merge for built-in kinds.
  The merge keys come from a table of the common list fields (containers, env, volumes,
  ports, conditions, ...) instead of the Go struct tags; ``$patch: delete|replace``,
  ``$deleteFromPrimitiveList/...`` and ``$setElementOrder/...`` directives are understood
  (the last one is accepted and ignored: the element order is kept as merged).
* ``application/apply-patch+yaml``: server-side apply, emulated as a merge of the applied
  configuration (strategic for built-ins, RFC 7386 for custom resources). Field ownership,
  ``managedFields`` and apply conflicts are NOT emulated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
TYPES = (MERGE, JSON, STRATEGIC, APPLY)


class PatchError(ValueError):
    """The patch cannot be applied to this object (422 on the API)."""


class PatchTestFailed(PatchError):
    """A JSON-patch ``test`` operation did not match (kopf's optimistic-concurrency guard)."""


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: returns the patched copy; the inputs are not modified."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: returns the patched copy."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, operations, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchTestFailed(f"the test operation failed: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
        raise PatchError(str(exc)) from exc


# Merge keys of list fields in the built-in kinds (from the patchMergeKey struct tags).
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "readinessGates": "conditionType",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
}
# Lists of scalars that merge as sets (patchStrategy=merge).
_MERGED_SCALAR_LISTS = frozenset({"finalizers"})


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # containerPort in containers, port in services
        if items and all(isinstance(item, Mapping) and "containerPort" in item for item in items):
            return "containerPort"
        if items and all(isinstance(item, Mapping) and "port" in item for item in items):
            return "port"
        return None
    return _MERGE_KEYS.get(field)


def strategic(target: Any, patch: Any) -> Any:
    """A strategic merge patch for built-in kinds; returns the patched copy."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic(result.get(key), value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = value
    return result


def _strategic_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    existing: list[Any] = list(current) if isinstance(current, list) else []
    if field in _MERGED_SCALAR_LISTS and all(not isinstance(item, (Mapping, list)) for item in patch):
        return existing + [item for item in patch if item not in existing]
    key = _merge_key(field, [item for item in patch if isinstance(item, Mapping) and item.get("$patch") != "delete"]
                     or [item for item in patch if isinstance(item, Mapping)])
    if key is None or not all(isinstance(item, Mapping) and key in item for item in patch):
        if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
            return [item for item in patch if not (isinstance(item, Mapping) and "$patch" in item)]
        return copy.deepcopy(patch)
    result = [copy.deepcopy(item) for item in existing]
    for item in patch:
        position = next((i for i, old in enumerate(result)
                         if isinstance(old, Mapping) and old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(strategic({}, item))
        else:
            result[position] = strategic(result[position], item)
    return result
