"""Kubernetes protobuf request bodies, decoded for the few kinds ``kubectl create`` sends.

kubectl's typed clients send built-in objects as ``application/vnd.kubernetes.protobuf``
(``kubectl create namespace|configmap|secret|serviceaccount``) and do not fall back to JSON.
:mod:`.apiserver` calls :func:`decode` for such bodies. It reads the ``k8s\\x00`` envelope
(``runtime.Unknown``) and the object with a field table per kind taken from
``k8s.io/api/core/v1/generated.proto``; unknown fields are skipped. Other kinds raise
:class:`Unsupported` (415): send them as JSON (``kubectl apply -f``).
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

# A schema maps a field number to (JSON name, type); a type is a scalar name, a nested schema
# (message), or ("repeated", type).
Schema = dict[int, tuple[str, Any]]

_OWNER_REFERENCE: Schema = {5: ("apiVersion", "string"), 1: ("kind", "string"), 3: ("name", "string"),
                            4: ("uid", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
_OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    11: ("labels", "map<string,string>"), 12: ("annotations", "map<string,string>"),
    13: ("ownerReferences", ("repeated", _OWNER_REFERENCE)), 14: ("finalizers", ("repeated", "string")),
}
_LOCAL_REFERENCE: Schema = {1: ("name", "string")}
_KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {1: ("metadata", _OBJECT_META), 2: ("spec", {1: ("finalizers", ("repeated", "string"))})},
    ("v1", "ConfigMap"): {1: ("metadata", _OBJECT_META), 2: ("data", "map<string,string>"),
                          3: ("binaryData", "map<string,bytes>"), 4: ("immutable", "bool")},
    ("v1", "Secret"): {1: ("metadata", _OBJECT_META), 2: ("data", "map<string,bytes>"), 3: ("type", "string"),
                       4: ("stringData", "map<string,string>"), 5: ("immutable", "bool")},
    ("v1", "ServiceAccount"): {1: ("metadata", _OBJECT_META),
                               3: ("imagePullSecrets", ("repeated", _LOCAL_REFERENCE)),
                               4: ("automountServiceAccountToken", "bool")},
}


_DELETE_OPTIONS: Schema = {2: ("preconditions", {1: ("uid", "string"), 2: ("resourceVersion", "string")}),
                           4: ("propagationPolicy", "string"), 5: ("dryRun", ("repeated", "string"))}
_KINDS[("meta.k8s.io/v1", "DeleteOptions")] = _KINDS[("v1", "DeleteOptions")] = _DELETE_OPTIONS


class Unsupported(ValueError):
    """Not a protobuf body this module can read."""


def supported_kinds() -> list[str]:
    return sorted({kind for _, kind in _KINDS} - {"DeleteOptions"})


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of a supported kind."""
    if not body.startswith(MAGIC):
        raise Unsupported("not a Kubernetes protobuf envelope")
    envelope = _fields(body[len(MAGIC):])
    type_meta = _fields(_one(envelope, 1))
    api_version, kind = _one(type_meta, 1).decode(), _one(type_meta, 2).decode()
    schema = _KINDS.get((api_version, kind))
    if schema is None:
        raise Unsupported(f"{api_version} {kind} in protobuf (the emulator reads {', '.join(supported_kinds())}; "
                          "send other kinds as JSON, e.g. kubectl apply -f)")
    obj = _message(_one(envelope, 2), schema)
    return {"apiVersion": api_version, "kind": kind, **obj}


def _one(fields: dict[int, list[Any]], number: int) -> bytes:
    values = fields.get(number) or [b""]
    value = values[-1]
    if not isinstance(value, bytes):
        raise Unsupported(f"field {number} is not length-delimited")
    return value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise Unsupported("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> dict[int, list[Any]]:
    """The wire format: field number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list[Any]] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise Unsupported(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _message(data: bytes, schema: Schema) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, values in _fields(data).items():
        if number not in schema:
            continue  # a field this emulator does not store
        name, kind = schema[number]
        if isinstance(kind, tuple):
            result[name] = [_value(kind[1], value) for value in values]
        elif isinstance(kind, str) and kind.startswith("map<"):
            entries: dict[str, Any] = {}
            for entry in values:
                pair = _fields(entry)
                key = _one(pair, 1).decode()
                raw = _one(pair, 2)
                entries[key] = base64.b64encode(raw).decode() if kind.endswith("bytes>") else raw.decode()
            result[name] = entries
        else:
            result[name] = _value(kind, values[-1])
    # Go writes empty strings and leaves nil lists and maps; its JSON (omitempty) drops them.
    return {name: value for name, value in result.items() if value not in ("", [], {})}


def _value(kind: Any, value: Any) -> Any:
    if isinstance(kind, dict):
        return _message(value, kind)
    if kind == "string":
        return value.decode()
    if kind == "bool":
        return bool(value)
    raise Unsupported(f"unsupported field type {kind}")
