"""Typed views of the resource bodies: one place that knows their field names and defaults.

An AgentRun or WorkerPool arrives as a raw dict (a lightkube ``to_dict``, a kopf ``Body``, a
broker message's ``spec``). Reading it through these views instead of ``spec.get(...)``
keeps each default (the pool ``default``, three attempts, the thread id rule) in one copy.
The views wrap the mapping without copying or validating it (the CRD schema validated it);
``raw`` is the mapping itself. Used by the operator, the worker and the contract's own
modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_POOL = "default"
"""The WorkerPool of a run without ``spec.workerPool`` (the CRD defaults it the same)."""
DEFAULT_MAX_ATTEMPTS = 3
"""Executions of a run before a lost worker fails it (``spec.maxAttempts``)."""
DEFAULT_MAX_ITERATIONS = 100
"""Model turns before a run ends ``MaxIterationsReached`` (``spec.agent.maxIterations``)."""

_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else _EMPTY


def _seconds(value: Any) -> int | float | None:
    """A duration as written: whole seconds stay an int (``timeoutSeconds=600`` in messages)."""
    if value is None or value == "":
        return None
    number = float(value)
    return int(number) if number.is_integer() else number


def thread_id(uid: str, *, spec_thread: Any = None, status_thread: Any = None) -> str:
    """The rule for a run's thread: the one recorded on its status (dispatch fixed it), else
    the one its spec names, else a new thread whose id is the run's uid (deterministic, so
    handler retries agree)."""
    return str(status_thread or spec_thread or uid)


class RunSpec:
    """``AgentRun.spec`` (also the broker message's ``spec``)."""

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        self.raw: Mapping[str, Any] = raw if raw is not None else _EMPTY

    @property
    def pool(self) -> str:
        return str(self.raw.get("workerPool") or DEFAULT_POOL)

    @property
    def thread_id(self) -> str | None:
        value = self.raw.get("threadId")
        return str(value) if value else None

    @property
    def timeout_seconds(self) -> int | float | None:
        return _seconds(self.raw.get("timeoutSeconds"))

    @property
    def max_attempts(self) -> int:
        return int(self.raw.get("maxAttempts") or DEFAULT_MAX_ATTEMPTS)

    @property
    def ttl_after_finished(self) -> int | None:
        value = self.raw.get("ttlSecondsAfterFinished")
        return None if value is None else int(value)

    @property
    def stop(self) -> bool:
        return bool(self.raw.get("stop"))

    @property
    def agent(self) -> Mapping[str, Any]:
        return _mapping(self.raw.get("agent"))

    @property
    def model(self) -> str | None:
        value = self.agent.get("model")
        return None if value is None else str(value)

    @property
    def workflow_name(self) -> str | None:
        value = _mapping(self.raw.get("workflowRef")).get("name")
        return None if value is None else str(value)

    @property
    def is_workflow(self) -> bool:
        return bool(self.raw.get("workflowRef"))

    @property
    def multitask_strategy(self) -> str | None:
        value = self.raw.get("multitaskStrategy")
        return str(value) if value else None


class RunStatus:
    """``AgentRun.status``."""

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        self.raw: Mapping[str, Any] = raw if raw is not None else _EMPTY

    @property
    def phase(self) -> str | None:
        value = self.raw.get("phase")
        return str(value) if value else None

    @property
    def attempt(self) -> int:
        """The attempt the status speaks of; 0 when none was written yet."""
        return int(self.raw.get("attempt") or 0)

    @property
    def thread_id(self) -> str | None:
        value = self.raw.get("threadId")
        return str(value) if value else None

    @property
    def queued_at(self) -> str | None:
        return self.raw.get("queuedAt") or None

    @property
    def started_at(self) -> str | None:
        return self.raw.get("startedAt") or None

    @property
    def finished_at(self) -> str | None:
        return self.raw.get("finishedAt") or None

    @property
    def worker_instance(self) -> str | None:
        return self.raw.get("workerInstance") or None

    @property
    def reason(self) -> str | None:
        return self.raw.get("reason") or None

    @property
    def message(self) -> str | None:
        return self.raw.get("message") or None

    @property
    def iterations(self) -> int:
        return int(self.raw.get("iterations") or 0)


class AgentRun:
    """An AgentRun body: metadata, :class:`RunSpec`, :class:`RunStatus` and the rules that
    combine them."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.raw = body
        self.metadata: Mapping[str, Any] = _mapping(body.get("metadata"))
        self.spec = RunSpec(_mapping(body.get("spec")))
        self.status = RunStatus(_mapping(body.get("status")))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid") or "")

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or "")

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation") or 1)

    @property
    def created_at(self) -> str | None:
        return self.metadata.get("creationTimestamp") or None

    @property
    def thread_id(self) -> str:
        return thread_id(self.uid, spec_thread=self.spec.thread_id, status_thread=self.status.thread_id)

    def is_run(self, uid: str) -> bool:
        """Whether this body is the run ``uid`` (not a new object that took its name)."""
        return self.metadata.get("uid") == uid

    def runs_attempt(self, uid: str, attempt: int, phases: frozenset[Any]) -> bool:
        """Whether this body is run ``uid`` at ``attempt`` in one of ``phases``."""
        return self.is_run(uid) and self.status.attempt == attempt and self.status.phase in phases


class PoolSpec:
    """``WorkerPool.spec``: replicas, slots and autoscaling, with the CRD's defaults."""

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        self.raw: Mapping[str, Any] = raw if raw is not None else _EMPTY

    @property
    def min_replicas(self) -> int:
        return int(self.raw.get("minReplicas", 1))

    @property
    def max_replicas(self) -> int:
        return int(self.raw.get("maxReplicas", 10))

    @property
    def runs_per_replica(self) -> int:
        return int(self.raw.get("runsPerReplica", 8))

    @property
    def scale_down_stabilization_seconds(self) -> float:
        return float(self.raw.get("scaleDownStabilizationSeconds", 300))

    @property
    def processes(self) -> int:
        return int(self.raw.get("processes", 1))

    @property
    def threads(self) -> int:
        return int(self.raw.get("threads", 8))

    @property
    def autoscaling(self) -> Mapping[str, Any]:
        return _mapping(self.raw.get("autoscaling"))

    @property
    def autoscaling_mode(self) -> str:
        return str(self.autoscaling.get("mode", "operator"))
