"""Custom-resource admission as kube-apiserver does it: defaults, unknown fields, schema, CEL.

Called by the Kubernetes API emulator (``agentrun_local.emulator``) on every write of a custom
resource, by the tests of ``crds/``, and by anyone who wants to check a manifest before
``kubectl apply``. The CRDs in ``crds/`` are the only input: nothing here knows about AgentRun
or WorkerPool fields.

The steps and their order are the API server's:

1. :func:`apply_defaults`: ``null`` values of non-nullable fields are pruned (or replaced by
   their default), then every missing field with a ``default`` gets it, recursively, so that a
   defaulted object gets the defaults of its own fields too.
2. Unknown fields (strict field validation, ``kubectl``'s default): each is reported as
   ``unknown field "spec.foo"`` and pruned, as the API server prunes them.
3. The structural OpenAPI v3 schema, translated to JSON Schema draft 4 (``nullable``,
   ``x-kubernetes-int-or-string``, ``x-kubernetes-preserve-unknown-fields``) and checked with
   ``jsonschema``; list types ``set`` and ``map`` are checked for duplicates. Messages are
   worded as kube-apiserver words them (``spec.x: Invalid value: 0: spec.x in body should be
   greater than or equal to 1``).
4. The CEL rules (``x-kubernetes-validations``) with ``cel-python``, ``self`` bound to the
   node's value. As in kube-apiserver, a type error or an unsupported enum value anywhere
   skips every rule (and says so); beyond that a rule is skipped on a node that itself failed
   step 3, where it could only report the same problem again. Transition rules (those using
   ``oldSelf``) need the previous object and are not evaluated: this module validates writes
   as creations.

The schema of each CRD version is compiled once (JSON Schema validator, CEL programs) and
cached for as long as the CRD dict lives; do not mutate a CRD dict after passing it here.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import celpy
import celpy.adapter
import celpy.celparser
import celpy.celtypes
import jsonschema
import yaml

__all__ = [
    "FieldError",
    "SchemaError",
    "apply_defaults",
    "check_crd",
    "crd_for",
    "crds_dir",
    "format_errors",
    "load_crd",
    "validate",
]

GROUP = "agentrun.io"
DEFAULT_VERSION = "v1alpha1"

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
FORBIDDEN = "FieldValueForbidden"
DUPLICATE = "FieldValueDuplicate"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"

#: kube-apiserver evaluates no CEL rule once schema validation found one of these.
_BLOCKING = frozenset({TYPE_INVALID, NOT_SUPPORTED})
_NOT_CHECKED = (
    'Invalid value: "null": some validation rules were not checked because the object was '
    "invalid; correct the existing errors to complete validation"
)
#: Prefix, in the set of failed paths, of a list that has more items than its maxItems: its
#: items are not checked one by one (duplicates, CEL rules), it is refused for its length.
_TOO_MANY_MARK = "\x00too-many:"
#: Fields every object may carry beside its schema (ObjectMeta is validated elsewhere).
_OBJECT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One problem with a custom resource, as kube-apiserver reports it in ``status.details.causes``."""

    field: str
    """The field, e.g. ``spec.agent.maxIterations``; ``spec`` for a rule on spec (plus its
    ``fieldPath`` when the rule gives one); ``<nil>`` for the note that rules were skipped."""
    message: str
    """What is wrong, e.g. ``Invalid value: -1: spec.x in body should be greater than or equal to 1``."""
    reason: str
    """``FieldValueInvalid``, ``FieldValueRequired``, ``FieldValueNotSupported``,
    ``FieldValueTypeInvalid``, ``FieldValueForbidden`` (unknown fields, forbidding rules), and
    where kube-apiserver uses them ``FieldValueDuplicate``, ``FieldValueTooLong``,
    ``FieldValueTooMany``."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SchemaError(ValueError):
    """A CRD this module cannot use: no such version, or a CEL rule that does not compile."""


# -- Loading CRDs -------------------------------------------------------------------------------


def crds_dir() -> pathlib.Path:
    """The folder of the project's CRDs.

    ``AGENTRUN_CRDS_DIR`` when set; else ``agentrun/crds`` inside the package (present when a
    wheel is built with ``crds/`` force-included there); else ``crds/`` beside the package, which
    is the source tree and every editable install.
    """
    override = os.environ.get("AGENTRUN_CRDS_DIR")
    if override:
        return pathlib.Path(override)
    here = pathlib.Path(__file__).resolve().parent
    packaged = here / "crds"
    if packaged.is_dir():
        return packaged
    return here.parent / "crds"


def load_crd(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one CustomResourceDefinition from a YAML file."""
    with open(path, encoding="utf-8") as stream:
        crd = yaml.safe_load(stream)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise SchemaError(f"{path}: not a CustomResourceDefinition")
    return crd


@functools.lru_cache(maxsize=4)
def _crds_in(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = load_crd(path)
        found[crd["spec"]["names"]["kind"]] = crd
    return found


def crd_for(kind: str) -> dict[str, Any]:
    """The project's CRD of ``kind`` (``AgentRun``; plural, singular and short names work too).

    Loaded once from :func:`crds_dir` and shared: treat it as read-only.
    """
    folder = crds_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"no CRD folder at {folder} (set AGENTRUN_CRDS_DIR)")
    crds = _crds_in(folder)
    if kind in crds:
        return crds[kind]
    wanted = kind.lower()
    for crd in crds.values():
        names = crd["spec"]["names"]
        aliases = {names["kind"].lower(), names["plural"], names.get("singular", ""), *names.get("shortNames", [])}
        if wanted in aliases or wanted == f"{names['plural']}.{crd['spec']['group']}":
            return crd
    raise KeyError(f"no CRD for kind {kind!r} in {folder}")


# -- The compiled form of a schema --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
    rule: str
    program: Any  # celpy.Runner
    message: str | None
    message_program: Any | None
    reason: str
    field_path: str

    def error_string(self) -> str:
        return (self.message or self.rule).strip()


@dataclasses.dataclass
class _Node:
    """One schema node, with what defaulting, pruning and rule evaluation need from it."""

    type: str | None
    nullable: bool
    has_default: bool
    default: Any
    preserve_unknown: bool
    embedded: bool
    list_type: str | None
    list_keys: tuple[str, ...]
    properties: dict[str, _Node] = dataclasses.field(default_factory=dict)
    items: _Node | None = None
    additional: _Node | bool = False  # a schema for other keys, True (anything), False (none)
    rules: tuple[_Rule, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Compiled:
    root: _Node
    validator: jsonschema.protocols.Validator


# OpenAPI v3 (as Kubernetes uses it) -> JSON Schema draft 4, whose boolean exclusiveMinimum
# and exclusiveMaximum are OpenAPI's. Only value validations are kept: x-kubernetes-* and
# description go; nullable becomes a "null" type; int-or-string becomes a type of its own.
_COPIED = (
    "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "minProperties",
    "maxProperties", "required",
)
_INT_OR_STRING = "int-or-string"


def _json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {key: copy.deepcopy(schema[key]) for key in _COPIED if key in schema}
    nullable = bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = [_INT_OR_STRING, "null"] if nullable else _INT_OR_STRING
    elif "type" in schema:
        out["type"] = [schema["type"], "null"] if nullable else schema["type"]
    if "enum" in schema:
        out["enum"] = list(schema["enum"]) + ([None] if nullable and None not in schema["enum"] else [])
    if schema.get("uniqueItems") and schema.get("x-kubernetes-list-type") not in ("set", "map"):
        out["uniqueItems"] = True  # for set and map the list walk reports duplicates, as Kubernetes does
    if "properties" in schema:
        out["properties"] = {name: _json_schema(sub) for name, sub in schema["properties"].items()}
    if isinstance(schema.get("items"), Mapping):
        out["items"] = _json_schema(schema["items"])
    if isinstance(schema.get("additionalProperties"), Mapping):
        out["additionalProperties"] = _json_schema(schema["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_json_schema(sub) for sub in schema[key]]
    if "not" in schema:
        out["not"] = _json_schema(schema["not"])
    return out


_TYPES = jsonschema.Draft4Validator.TYPE_CHECKER.redefine(
    _INT_OR_STRING,
    lambda _checker, value: isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
)
_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, type_checker=_TYPES)

_FORMATS = jsonschema.FormatChecker(formats=())
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("z", "Z").replace(" ", "T"))
    except ValueError:
        return False
    return True


def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return bool(_DATE.match(value)) and datetime.date.fromisoformat(value) is not None
    except ValueError:
        return False


_FORMATS.checks("date-time")(_is_date_time)
_FORMATS.checks("date")(_is_date)


_cache_lock = threading.Lock()
_compiled_cache: dict[int, tuple[Mapping[str, Any], _Compiled]] = {}
_programs: dict[str, Any] = {}
_environment: celpy.Environment | None = None


def _program(expression: str) -> Any:
    """The CEL program of ``expression``, compiled once per process (callers hold the lock)."""
    global _environment
    program = _programs.get(expression)
    if program is None:
        if _environment is None:
            _environment = celpy.Environment()
        try:
            program = _environment.program(_environment.compile(expression))
        except celpy.celparser.CELParseError as exc:
            raise SchemaError(f"CEL rule {expression!r} does not compile: {exc}") from exc
        _programs[expression] = program
    return program


def _version_schema(crd: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    for entry in crd.get("spec", {}).get("versions", []):
        if entry.get("name") == version:
            schema = (entry.get("schema") or {}).get("openAPIV3Schema")
            if not isinstance(schema, Mapping):
                raise SchemaError(f"{crd.get('metadata', {}).get('name')}: version {version} has no schema")
            return schema
    raise SchemaError(f"{crd.get('metadata', {}).get('name')}: no version {version!r}")


def _compiled(crd: Mapping[str, Any], version: str) -> _Compiled:
    schema = _version_schema(crd, version)
    key = id(schema)
    hit = _compiled_cache.get(key)
    if hit is not None and hit[0] is schema:
        return hit[1]
    with _cache_lock:
        hit = _compiled_cache.get(key)
        if hit is not None and hit[0] is schema:
            return hit[1]  # another thread compiled it meanwhile
        root = _node(schema)
        validator = _Validator(_json_schema(schema), format_checker=_FORMATS)
        compiled = _Compiled(root=root, validator=validator)
        if len(_compiled_cache) > 256:  # CRDs are few; this only bounds a pathological caller
            _compiled_cache.clear()
        _compiled_cache[key] = (schema, compiled)  # keeps ``schema`` alive, so its id stays unique
        return compiled


def _node(schema: Mapping[str, Any]) -> _Node:
    node = _Node(
        type=schema.get("type"),
        nullable=bool(schema.get("nullable")),
        has_default="default" in schema,
        default=schema.get("default"),
        preserve_unknown=bool(schema.get("x-kubernetes-preserve-unknown-fields")),
        embedded=bool(schema.get("x-kubernetes-embedded-resource")),
        list_type=schema.get("x-kubernetes-list-type"),
        list_keys=tuple(schema.get("x-kubernetes-list-map-keys") or ()),
    )
    node.properties = {name: _node(sub) for name, sub in (schema.get("properties") or {}).items()}
    if isinstance(schema.get("items"), Mapping):
        node.items = _node(schema["items"])
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        node.additional = _node(additional)
    elif additional is True:
        node.additional = True
    node.rules = tuple(_rule(entry) for entry in schema.get("x-kubernetes-validations") or ())
    return node


def _rule(entry: Mapping[str, Any]) -> _Rule:
    expression = entry["rule"]
    message_expression = entry.get("messageExpression")
    return _Rule(
        rule=expression,
        program=_program(expression),
        message=entry.get("message"),
        message_program=_program(message_expression) if message_expression else None,
        reason=entry.get("reason") or INVALID,
        field_path=entry.get("fieldPath") or "",
    )


# -- Paths --------------------------------------------------------------------------------------


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _key(path: str, key: str) -> str:
    return f"{path}[{key}]"


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _render(root: _Node, elements: Iterable[str | int]) -> str:
    """A jsonschema path as kube-apiserver writes it: ``spec.agent.script[0].text``."""
    path = ""
    node: _Node | None = root
    for element in elements:
        if isinstance(element, int):
            path = _index(path, element)
            node = node.items if node is not None else None
        elif node is not None and element in node.properties:
            path = _child(path, element)
            node = node.properties[element]
        elif node is not None and isinstance(node.additional, _Node):
            path = _key(path, element)
            node = node.additional
        else:
            path = _child(path, element)
            node = None
    return path


# -- Step 1: defaults ---------------------------------------------------------------------------


def apply_defaults(crd: Mapping[str, Any], obj: Mapping[str, Any], version: str = DEFAULT_VERSION) -> dict[str, Any]:
    """A deep copy of ``obj`` with the CRD's defaults applied, as the API server's defaulting does."""
    result = copy.deepcopy(dict(obj))
    _default(result, _compiled(crd, version).root)
    return result


def _default(value: Any, node: _Node | None) -> None:
    if node is None:
        return
    if isinstance(value, dict):
        for name, child in node.properties.items():
            present = name in value
            if present and value[name] is None and not child.nullable:
                if child.has_default:
                    value[name] = copy.deepcopy(child.default)
                else:
                    del value[name]
            elif not present and child.has_default:
                value[name] = copy.deepcopy(child.default)
        for name, item in value.items():
            schema = node.properties.get(name)
            if schema is None and isinstance(node.additional, _Node):
                schema = node.additional
            _default(item, schema)
    elif isinstance(value, list):
        for item in value:
            _default(item, node.items)


# -- Step 2: unknown fields ---------------------------------------------------------------------


def _prune(value: Any, node: _Node | None, path: str, errors: list[FieldError], *, is_object: bool = False) -> Any:
    if node is None:
        return value
    if isinstance(value, dict):
        if node.preserve_unknown and not node.properties and not isinstance(node.additional, _Node):
            return value
        kept: dict[str, Any] = {}
        for name, item in value.items():
            child = node.properties.get(name)
            if name == "metadata" and (is_object or node.embedded):
                kept[name] = item  # ObjectMeta: the API server validates it, not the CRD schema
            elif child is not None:
                kept[name] = _prune(item, child, _child(path, name), errors)
            elif isinstance(node.additional, _Node):
                kept[name] = _prune(item, node.additional, _key(path, name), errors)
            elif node.additional is True or node.preserve_unknown or (
                (is_object or node.embedded) and name in _OBJECT_FIELDS
            ):
                kept[name] = item
            else:
                where = _child(path, name)
                errors.append(FieldError(where, f'unknown field "{where}"', FORBIDDEN))
        return kept
    if isinstance(value, list) and node.items is not None:
        return [_prune(item, node.items, _index(path, i), errors) for i, item in enumerate(value)]
    return value


# -- Step 3: the schema -------------------------------------------------------------------------


def _quote(value: Any) -> str:
    """A value as Go's ``%v``/``%q`` prints it in kube-apiserver messages."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


#: kube-openapi's wording of the keywords that report ``Invalid value: <value>: <path> in body ...``.
_DETAILS = {
    "multipleOf": "should be a multiple of {limit}",
    "minLength": "should be at least {limit} chars long",
    "pattern": "should match '{limit}'",
    "minItems": "should have at least {limit} items",
    "uniqueItems": "shouldn't contain duplicates",
    "minProperties": "should have at least {limit} properties",
    "maxProperties": "should have at most {limit} properties",
}
#: Keywords whose reported value is the size of the list or object, not the value itself.
_COUNTED = frozenset({"minItems", "maxItems", "minProperties", "maxProperties"})


def _schema_errors(compiled: _Compiled, obj: Any) -> Iterator[tuple[FieldError, str]]:
    """``(error, the path of the node that failed)`` for every schema violation."""
    seen_required: set[str] = set()
    for error in compiled.validator.iter_errors(obj):
        path = _render(compiled.root, error.absolute_path)
        if error.validator == "required":
            # jsonschema reports each missing property; kube-apiserver too, each at its own path
            if path not in seen_required and isinstance(error.instance, dict):
                seen_required.add(path)
                for name in error.validator_value:
                    if name not in error.instance:
                        yield FieldError(_child(path, name), "Required value", REQUIRED), path
            continue
        yield _keyword_error(error, path), path


def _keyword_error(error: jsonschema.ValidationError, path: str) -> FieldError:
    keyword, limit, value = error.validator, error.validator_value, error.instance
    shown = len(value) if keyword in _COUNTED else _quote(value)
    body = f"{path} in body"
    if keyword == "type":
        expected = [t for t in (limit if isinstance(limit, list) else [limit]) if t != "null"]
        names = ",".join("integer,string" if t == _INT_OR_STRING else t for t in expected)
        actual = _json_type(value)
        return FieldError(path, f'Invalid value: "{actual}": {body} must be of type {names}: "{actual}"', TYPE_INVALID)
    if keyword == "format":
        return FieldError(path, f"Invalid value: {shown}: {body} must be of type {limit}: {shown}", TYPE_INVALID)
    if keyword == "enum":
        supported = ", ".join(_quote(v) for v in limit if v is not None)
        return FieldError(path, f"Unsupported value: {shown}: supported values: {supported}", NOT_SUPPORTED)
    if keyword in ("minimum", "maximum"):
        exclusive = error.schema.get("exclusiveMinimum" if keyword == "minimum" else "exclusiveMaximum") is True
        relation = "greater than" if keyword == "minimum" else "less than"
        relation += "" if exclusive else " or equal to"
        return FieldError(path, f"Invalid value: {shown}: {body} should be {relation} {limit}", INVALID)
    if keyword == "maxLength":
        return FieldError(path, f"Too long: may not be longer than {limit}", TOO_LONG)
    if keyword == "maxItems":
        return FieldError(path, f"Too many: {shown}: must have at most {limit} items", TOO_MANY)
    detail = _DETAILS[keyword].format(limit=limit) if keyword in _DETAILS else error.message
    return FieldError(path, f"Invalid value: {shown}: {body} {detail}", INVALID)


def _list_errors(value: Any, node: _Node | None, path: str, failed: frozenset[str] = frozenset()
                 ) -> Iterator[FieldError]:
    """Duplicates in ``x-kubernetes-list-type`` ``set`` and ``map`` lists, at every depth.

    A list longer than its ``maxItems`` (marked in ``failed``) is not searched: it is refused
    for its length, and 60,000 copies of one name made 60,000 errors (a 9 MB answer).
    """
    if node is None:
        return
    if isinstance(value, dict):
        for name, item in value.items():
            child = node.properties.get(name)
            if child is not None:
                yield from _list_errors(item, child, _child(path, name), failed)
            elif isinstance(node.additional, _Node):
                yield from _list_errors(item, node.additional, _key(path, name), failed)
    elif isinstance(value, list) and _TOO_MANY_MARK + path not in failed:
        # Identities in a set, not values in a list: comparing each item with all before it
        # cost 8 s of CPU for the 28,000 distinct names that fit in a 256 KiB body.
        seen: set[str] = set()
        for index, item in enumerate(value):
            where = _index(path, index)
            if node.list_type == "set":
                identity = _identity(item)
                if identity in seen:
                    yield FieldError(where, f"Duplicate value: {_quote(item)}", DUPLICATE)
                seen.add(identity)
            elif node.list_type == "map" and isinstance(item, dict):
                key = {k: item.get(k) for k in node.list_keys}
                identity = _identity(key)
                if identity in seen:
                    yield FieldError(where, f"Duplicate value: {_quote(key)}", DUPLICATE)
                seen.add(identity)
            yield from _list_errors(item, node.items, where, failed)


def _identity(value: Any) -> str:
    """Equal JSON values, and only those, have equal identities (object keys in any order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# -- Step 4: CEL rules --------------------------------------------------------------------------

_OLD_SELF = re.compile(r"\boldSelf\b")


_ABSENT = object()
"""No old value at this place: a create, or a field the update adds."""


def _cel_errors(value: Any, node: _Node | None, path: str, failed: set[str], old: Any = _ABSENT
                ) -> Iterator[FieldError]:
    if node is None or value is None:
        return
    if old is not _ABSENT and value == old:
        # Ratcheting, as kube-apiserver does (CRDValidationRatcheting, on by default since
        # 1.30): a value an update leaves unchanged is not validated again. A status write
        # therefore does not re-run the spec's rules, the bulk of an AgentRun's CEL cost.
        return
    if node.rules and path not in failed:
        yield from _evaluate(node, value, path)
    if isinstance(value, dict):
        for name, item in value.items():
            before = old.get(name, _ABSENT) if isinstance(old, dict) else _ABSENT
            child = node.properties.get(name)
            if child is not None:
                yield from _cel_errors(item, child, _child(path, name), failed, before)
            elif isinstance(node.additional, _Node):
                yield from _cel_errors(item, node.additional, _key(path, name), failed, before)
    elif isinstance(value, list) and _TOO_MANY_MARK + path not in failed:
        # The rules of the items of a list longer than its maxItems are not evaluated: the
        # list is refused anyway, and evaluating them would cost in proportion to a length
        # the schema forbids (8,000 script steps took 12 s). kube-apiserver bounds the same
        # cost with its CEL cost budget.
        for index, item in enumerate(value):
            yield from _cel_errors(item, node.items, _index(path, index), failed)


def _evaluate(node: _Node, value: Any, path: str) -> Iterator[FieldError]:
    activation = {"self": celpy.adapter.json_to_cel(value)}
    invalid = f'Invalid value: "{node.type or _json_type(value)}"'
    for rule in node.rules:
        if _OLD_SELF.search(rule.rule):
            continue  # a transition rule: there is no old object to compare with
        where = path
        if rule.field_path:
            where = (path + rule.field_path) if path else rule.field_path.lstrip(".")
        try:
            result = rule.program.evaluate(activation)
        except Exception as exc:  # noqa: BLE001  (CELEvalError, and whatever a rule's data provokes)
            result = exc
        if isinstance(result, Exception):  # celpy also returns errors as values
            cause = result.args[0] if result.args else result
            yield FieldError(where, f"{invalid}: {cause} evaluating rule: {rule.error_string()}", INVALID)
            continue
        if not isinstance(result, (bool, celpy.celtypes.BoolType)):
            yield FieldError(where, f"{invalid}: rule did not evaluate to a bool: {rule.rule}", INVALID)
            continue
        if result:
            continue
        message = _message(rule, activation)
        if rule.reason == FORBIDDEN:
            yield FieldError(where, f"Forbidden: {message}", FORBIDDEN)
        elif rule.reason == REQUIRED:
            yield FieldError(where, f"Required value: {message}", REQUIRED)
        elif rule.reason == DUPLICATE:
            yield FieldError(where, f"Duplicate value: {_quote(message)}", DUPLICATE)
        else:
            yield FieldError(where, f"{invalid}: {message}", INVALID)


def _message(rule: _Rule, activation: Mapping[str, Any]) -> str:
    if rule.message_program is not None:
        try:
            text = rule.message_program.evaluate(activation)
        except Exception:  # noqa: BLE001  (a message that cannot be built falls back to message)
            text = None
        if isinstance(text, str) and text.strip():
            return str(text).strip()
    if rule.message:
        return rule.message.strip()
    return f"failed rule: {rule.rule.strip()}"


# -- The whole admission ------------------------------------------------------------------------


def validate(crd: Mapping[str, Any], obj: Mapping[str, Any], version: str = DEFAULT_VERSION, *,
             old: Mapping[str, Any] | None = None) -> list[FieldError]:
    """Every problem the API server would report for writing ``obj``; empty when it is valid.

    Defaults are applied first (again, if the caller did already: defaulting is idempotent).
    Unknown fields come first, then schema errors, then CEL rule violations. ``old`` (the
    stored object, on an update) exempts unchanged values from the CEL rules, as the API
    server's validation ratcheting does.
    """
    compiled = _compiled(crd, version)
    defaulted = apply_defaults(crd, obj, version)
    errors: list[FieldError] = []
    pruned = _prune(defaulted, compiled.root, "", errors, is_object=True)
    failed: set[str] = set()
    blocked = False
    for error, node_path in _schema_errors(compiled, pruned):
        errors.append(error)
        failed.add(node_path)
        if error.reason == TOO_MANY:
            failed.add(_TOO_MANY_MARK + node_path)
        blocked = blocked or error.reason in _BLOCKING
    errors.extend(_list_errors(pruned, compiled.root, "", frozenset(failed)))
    if blocked:
        errors.append(FieldError("<nil>", _NOT_CHECKED, INVALID))
    else:
        errors.extend(_cel_errors(pruned, compiled.root, "", failed, _ABSENT if old is None else old))
    return errors


def format_errors(kind: str, name: str, errors: Sequence[FieldError]) -> str:
    """The API server's message for a refused write.

    ``AgentRun.agentrun.io "x" is invalid: spec.stop: Invalid value: ...`` for one error, the
    errors in brackets, comma-separated, for several. ``kind`` may carry its group
    (``Foo.example.com``); a bare kind is taken as agentrun's.
    """
    qualified = kind if "." in kind else f"{kind}.{GROUP}"
    head = f'{qualified} "{name}" is invalid'
    if not errors:
        return head
    if len(errors) == 1:
        return f"{head}: {errors[0]}"
    return f"{head}: [{', '.join(str(e) for e in errors)}]"


# -- Checking a CRD itself ----------------------------------------------------------------------


def check_crd(crd: Mapping[str, Any]) -> list[str]:
    """Problems that make a CRD unfit for this project (empty when it is fit).

    Every served version must have a structural schema (a ``type`` on every node, except where
    ``x-kubernetes-int-or-string`` stands for it), a ``description`` on every node below the
    root, no ``additionalProperties`` beside ``properties``, and CEL rules that compile.
    """
    problems: list[str] = []
    for entry in crd.get("spec", {}).get("versions", []):
        schema = (entry.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, Mapping):
            problems.append(f"{entry.get('name')}: no openAPIV3Schema")
            continue
        problems.extend(f"{entry['name']}: {p}" for p in _check_node(schema, "", top=True))
        try:
            with _cache_lock:
                _node(schema)
        except SchemaError as exc:
            problems.append(f"{entry['name']}: {exc}")
    return problems


def _check_node(schema: Mapping[str, Any], path: str, *, top: bool = False) -> Iterator[str]:
    where = path or "<root>"
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        yield f"{where}: no type (not a structural schema)"
    if not top and not str(schema.get("description") or "").strip():
        yield f"{where}: no description"
    if "properties" in schema and "additionalProperties" in schema:
        yield f"{where}: additionalProperties beside properties"
    for name, sub in (schema.get("properties") or {}).items():
        yield from _check_node(sub, _child(path, name))
    if isinstance(schema.get("items"), Mapping):
        yield from _check_node(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _check_node(schema["additionalProperties"], f"{path}[*]")
