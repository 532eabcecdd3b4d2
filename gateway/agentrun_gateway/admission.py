"""The check of a create-run body: bytes in, the AgentRun to create or the refusal out.

:func:`check` is a pure function of the body, run by :class:`Pool` in a process (or thread)
of its own so that no body, however built, holds the event loop: the CEL rules of a valid
AgentRun cost up to ≈ 0.6 s of CPU (a 1,000-step script), a body the schema refuses more.
:func:`agentrun_gateway.app.create_app` makes one :class:`Pool` per app; the create-run
handler reads at most :data:`MAX_BODY_BYTES` and hands the bytes over.

The rules, in order, each refusing with 400 and naming the field (or the limit):

- the bytes are UTF-8 (the position of the first bad byte) and JSON;
- containers nest at most ``max_depth`` deep (the body itself is level 1);
- no string, key or value, holds a NUL (PostgreSQL text cannot) or a lone surrogate (not
  encodable as UTF-8: the Kubernetes API, Redis and the database would all fail on it);
- numbers fit Kubernetes: integers in int64, floats finite (no ``NaN``/``Infinity``);
- the body is an object; then the envelope (``metadata``, ``kind``, …) and the CRD schema with
  its CEL rules (:func:`agentrun.schema.validate`) answer 422 with every field at fault;
- :data:`CREATED_BY` is the gateway's to set (422 if the body sets it), to the token's subject.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import re
from typing import Any, Literal

from agentrun import kube, schema

MAX_BODY_BYTES = 256 * 1024
"""Largest create-run body: kopf copies the spec into an annotation limited to 256 KiB, so a
larger body could never run; large inputs go in a ConfigMap or Secret (``spec.inputFrom``)."""

MAX_DEPTH = 64
"""Deepest nesting of a create-run body. The deepest place of the AgentRun schema is 7 levels
down (``spec.agent.script[].toolCalls[]`` fields); 64 leaves room for free-form JSON and is
far below the recursion that made deep bodies crash the parser (≈ 1,000)."""

MAX_ERRORS = 100
"""Field errors one answer lists at most: 20,000 unknown fields fit in a 249 KB body, and the
answer naming each of them was 2.9 MB."""

CREATED_BY = f"{kube.GROUP}/created-by"
"""Annotation the gateway sets on each run it creates: the subject (``sub``) of the token."""

API_VERSION = f"{kube.GROUP}/{kube.VERSION}"
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
INT64 = (-(2**63), 2**63 - 1)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The AgentRun to create: envelope completed, :data:`CREATED_BY` set."""

    obj: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Refused:
    """A body refused: the status and the protocol's JSON error, naming the field or limit."""

    status: int
    error: str
    message: str
    field: str | None = None
    errors: list[dict[str, str]] | None = None

    def answer(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.field is not None:
            extra["field"] = self.field
        if self.errors is not None:
            extra["errors"] = self.errors
        return {"error": self.error, "message": self.message, **extra}


Verdict = Accepted | Refused


class _BadNumber(str):
    """A number the parser saw but Kubernetes cannot store (found by the walk, which names it)."""

    __slots__ = ()


def _parse_int(text: str) -> int | _BadNumber:
    # Beyond 19 digits it cannot be an int64; int() of a 5,000-digit string even raises.
    if len(text.lstrip("-")) > 19:
        return _BadNumber(text[:24] + "…" if len(text) > 24 else text)
    value = int(text)
    return value if INT64[0] <= value <= INT64[1] else _BadNumber(text)


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text[:24])


def _bad_constant(text: str) -> _BadNumber:
    return _BadNumber(text)


def too_large(limit: int = MAX_BODY_BYTES) -> Refused:
    return Refused(413, "too_large", f"the body exceeds the limit of {limit} bytes ({limit // 1024} KiB); put a "
                                     "large input in a ConfigMap or Secret and use spec.inputFrom")


def check(raw: bytes, namespace: str, *, creator: str, max_depth: int = MAX_DEPTH) -> Verdict:
    """The AgentRun a create-run body asks for, or why it is refused. Pure: safe in any process."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Refused(400, "bad_request", f"the body is not valid UTF-8 (byte {exc.start})")
    try:
        body = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_bad_constant)
    except RecursionError:
        return _too_deep(max_depth)
    except ValueError as exc:
        return Refused(400, "bad_request", f"the body must be a JSON AgentRun object: {_safe(str(exc))}")
    refused = _walk(body, max_depth)
    if refused is not None:
        return refused
    if not isinstance(body, dict):
        return Refused(400, "bad_request", "the body must be a JSON AgentRun object")
    obj, errors = prepare_run(body, namespace, creator)
    if not errors:
        errors = [{"field": e.field, "message": e.message, "reason": e.reason}
                  for e in schema.validate(schema.crd_for("AgentRun"), obj)]
    if errors:
        metadata = obj.get("metadata")
        name = str(metadata.get("name") or "") if isinstance(metadata, dict) else ""
        message = f'AgentRun.{kube.GROUP} "{_safe(name)}" is invalid: ' + ", ".join(
            f"{e['field']}: {e['message']}" for e in errors[:MAX_ERRORS])
        if len(errors) > MAX_ERRORS:
            message += f", and {len(errors) - MAX_ERRORS} more errors"
        return Refused(422, "invalid", message, errors=errors[:MAX_ERRORS])
    return Accepted(obj)


def _too_deep(max_depth: int) -> Refused:
    return Refused(400, "bad_request", f"the body is nested deeper than {max_depth} levels of objects and lists")


def _walk(body: Any, max_depth: int) -> Refused | None:
    """The first string, key or number that cannot go further, or nesting beyond the limit.

    Iterative, so no body depth reaches Python's recursion limit.
    """
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, _BadNumber):
            where = path or "the body"
            return Refused(400, "bad_request", f"{where}: {value} is not a number Kubernetes can store (integers "
                                               "must fit in 64 bits, numbers must be finite)", field=path or None)
        if isinstance(value, str):
            problem = _string_problem(value)
            if problem:
                where = path or "the body"
                return Refused(400, "bad_request", f"{where}: strings may not contain {problem}", field=path or None)
        elif isinstance(value, (dict, list)):
            if depth > max_depth:
                return _too_deep(max_depth)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    problem = _string_problem(key)
                    if problem:
                        where = path or "the body"
                        return Refused(400, "bad_request", f"{where}: keys may not contain {problem}",
                                       field=path or None)
                    child = f"{path}.{key}" if path and _PLAIN_KEY.match(key) else (
                        key if not path and _PLAIN_KEY.match(key) else f"{path}[{key}]")
                else:
                    child = f"{path}[{key}]"
                stack.append((item, child, depth + 1))
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL (U+0000)"
    if _LONE_SURROGATE.search(text):
        return "a lone surrogate (U+D800 to U+DFFF: not encodable as UTF-8)"
    return None


def _safe(text: str) -> str:
    """``text`` fit for an answer: what cannot be UTF-8 encoded is escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def prepare_run(body: dict[str, Any], namespace: str, creator: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The AgentRun to create from a request body, and what is wrong with its envelope.

    ``apiVersion`` and ``kind`` may be left out; ``metadata.namespace`` is the URL's;
    :data:`CREATED_BY` is ``creator``. The spec is left to the CRD schema.
    """
    obj = dict(body)
    errors: list[dict[str, str]] = []

    def refuse(field: str, message: str, reason: str = schema.INVALID) -> None:
        errors.append({"field": field, "message": message, "reason": reason})

    obj.setdefault("apiVersion", API_VERSION)
    obj.setdefault("kind", "AgentRun")
    if obj["apiVersion"] != API_VERSION:
        refuse("apiVersion", f'Unsupported value: {json_repr(obj["apiVersion"])}: supported values: "{API_VERSION}"',
               schema.NOT_SUPPORTED)
    if obj["kind"] != "AgentRun":
        refuse("kind", f'Unsupported value: {json_repr(obj["kind"])}: supported values: "AgentRun"',
               schema.NOT_SUPPORTED)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        refuse("metadata", "Invalid value: must be an object", schema.TYPE_INVALID)
        return obj, errors
    metadata = dict(metadata)
    obj["metadata"] = metadata
    if metadata.get("namespace") not in (None, namespace):
        refuse("metadata.namespace", f'Invalid value: {json_repr(metadata["namespace"])}: does not match the '
                                     f'namespace of the URL ("{namespace}")')
    metadata["namespace"] = namespace
    name, generate = metadata.get("name"), metadata.get("generateName")
    if name is None and generate is None:
        refuse("metadata.name", "Required value: name or generateName is required", schema.REQUIRED)
    elif name is not None and (not isinstance(name, str) or not DNS_SUBDOMAIN.match(name)):
        refuse("metadata.name", f"Invalid value: {json_repr(name)}: a lowercase RFC 1123 subdomain must consist "
                                "of lower case alphanumeric characters, '-' or '.', and must start and end "
                                "with an alphanumeric character")
    elif generate is not None and (not isinstance(generate, str) or not DNS_SUBDOMAIN.match(generate + "x")):
        refuse("metadata.generateName", f"Invalid value: {json_repr(generate)}: must be a lowercase RFC 1123 prefix")
    for field in ("labels", "annotations"):
        value = metadata.get(field)
        if value is not None and (not isinstance(value, dict)
                                  or not all(isinstance(v, str) for v in value.values())):
            refuse(f"metadata.{field}", "Invalid value: must be a map of strings", schema.TYPE_INVALID)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and CREATED_BY in annotations:
        refuse(f"metadata.annotations[{CREATED_BY}]",
               "Forbidden: set by the gateway to the subject of the request's token", schema.FORBIDDEN)
    elif annotations is None or isinstance(annotations, dict):
        metadata["annotations"] = {**(annotations or {}), CREATED_BY: creator}
    if not isinstance(obj.get("spec"), dict):
        refuse("spec", "Required value", schema.REQUIRED)
    return obj, errors


def json_repr(value: Any) -> str:
    return json.dumps(value, default=str)


# -- where the check runs -------------------------------------------------------------------------

PoolKind = Literal["process", "thread"]


def _warm() -> None:
    """Compile the AgentRun schema (JSON Schema validator, CEL programs) in a pool worker."""
    schema.validate(schema.crd_for("AgentRun"), {"apiVersion": API_VERSION, "kind": "AgentRun",
                                                 "metadata": {"name": "warm"}, "spec": {}})


class Busy(Exception):
    """More bodies wait for a check than the pool queues: the gateway is overloaded."""


class Pool:
    """Runs :func:`check` off the event loop: in worker processes (the default) or threads.

    A thread shares the GIL with the event loop, so a long check still delays every other
    request by the interpreter's switch interval at each turn; a process does not
    (``bench gateway_validation`` measures both). At most ``queue`` checks wait or run at
    once; one more is :class:`Busy` (the handler answers 503) rather than an unbounded backlog.
    """

    def __init__(self, kind: PoolKind = "process", workers: int = 1, queue: int = 64) -> None:
        self.kind = kind
        self.workers = workers
        self.queue = queue
        self._pending = 0
        self._executor: concurrent.futures.Executor | None = None

    def start(self) -> None:
        if self.kind == "process":
            # spawn, not fork: the gateway has threads (uvicorn's, Redis', the test bed's), and a
            # forked child inherits their locks in whatever state they were.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_warm)
        else:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="admission",
                                                                   initializer=_warm)

    async def check(self, raw: bytes, namespace: str, *, creator: str, max_depth: int = MAX_DEPTH) -> Verdict:
        if self._executor is None:
            self.start()
        assert self._executor is not None
        if self._pending >= self.queue:
            raise Busy(f"{self._pending} bodies are being checked")
        self._pending += 1
        try:
            future = self._executor.submit(check, raw, namespace, creator=creator, max_depth=max_depth)
            return await asyncio.wrap_future(future)
        except concurrent.futures.BrokenExecutor:
            # A worker process died (killed, out of memory): start new ones for the next body.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise
        finally:
            self._pending -= 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
