"""What the CLI asks of wherever runs live, and the errors it can get back.

:class:`Client` is the interface :mod:`agentrun.cli` programs against; it has two
implementations: :mod:`agentrun.clients.cluster` (the Kubernetes API and Redis, straight)
and :mod:`agentrun.clients.gateway` (the gateway's REST + SSE API). Every failure a person
can do something about is a :class:`ClientError` carrying a ``hint`` that says what, so the
CLI prints two lines and an exit code instead of a traceback.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

from agentrun import phases, streams

Event = tuple[str | None, dict[str, Any]]
"""``(entry id, event)``; the id is None for events that are not stream entries (the
gateway's ``expired`` fallback and a final status built from the resource)."""


CONNECTION = "connection"
"""The type of the events a client yields (with id None) about its own connection: ``state``
``lost`` or ``resumed`` and a ``message`` for people. Never part of a run's stream."""


def connection_event(state: str, message: str) -> dict[str, Any]:
    return {"type": CONNECTION, "state": state, "message": message}


class ClientError(Exception):
    """A failure to explain: ``message`` says what happened, ``hint`` what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class Unreachable(ClientError):
    """The cluster, Redis or the gateway does not answer (exit code 2, as ``kubectl``'s)."""

    exit_code = 2


class NotFound(ClientError):
    pass


class Unauthorized(ClientError):
    """The gateway refused the token (401) or the token's namespaces (403)."""


class Invalid(ClientError):
    """The request was refused as malformed: a manifest field, a phase, a name taken."""


def not_found(namespace: str, name: str) -> NotFound:
    return NotFound(f'AgentRun "{name}" not found in namespace "{namespace}"',
                    f"`agentrun list -n {namespace}` lists the runs there (`-A`: every namespace).")


class Client(abc.ABC):
    """One way to reach the runs. Use as an async context manager."""

    where: str
    """Where requests go, for messages ("the cluster at https://…", "the gateway at …")."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create an AgentRun; returns it as stored."""

    async def apply(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Create an object of an agentrun kind, or update a WorkerPool's or AgentWorkflow's
        spec if it exists (``kubectl apply``); returns it and ``created`` or ``configured``.
        This default takes AgentRuns only."""
        if manifest.get("kind") == "AgentRun":
            return await self.create(manifest), "created"
        raise Invalid(f"{self.where} takes AgentRuns only, not the {manifest.get('kind')} "
                      f"\"{manifest.get('metadata', {}).get('name')}\"",
                      "Apply it with kubectl apply -f (or agentrun submit without --gateway), then submit the runs.")

    @abc.abstractmethod
    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        """One AgentRun; :class:`NotFound` when there is none."""

    @abc.abstractmethod
    async def list_runs(self, namespace: str | None, phase: str | None = None) -> list[dict[str, Any]]:
        """AgentRuns of a namespace (None: every namespace), optionally of one phase."""

    @abc.abstractmethod
    def watch(self, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
        """Each AgentRun again whenever it changes, until cancelled."""

    @abc.abstractmethod
    async def stop(self, namespace: str, name: str) -> tuple[dict[str, Any], bool]:
        """Ask a run to stop; returns the run and whether a stop was requested (False: it had ended)."""

    @abc.abstractmethod
    def events(self, run: dict[str, Any], *, last_id: str, follow: bool) -> AsyncIterator[Event]:
        """The run's stream after ``last_id``: with ``follow`` until its end, else what is there now.

        Following, a client may also yield :data:`CONNECTION` events (id None) when it loses
        its connection and gets it back, saying what was missed."""

    async def pool_missing(self, namespace: str, pool: str) -> list[str] | None:
        """The pools of ``namespace`` when ``pool`` is not among them; None when it exists or
        this client cannot tell."""
        return None


def phase_of(run: dict[str, Any]) -> str:
    return str((run.get("status") or {}).get("phase") or phases.Phase.PENDING)


def pool_of(run: dict[str, Any]) -> str:
    return str((run.get("spec") or {}).get("workerPool") or "default")


def not_started(run: dict[str, Any]) -> bool:
    return phase_of(run) in (phases.Phase.PENDING, phases.Phase.QUEUED)


def final_status(run: dict[str, Any]) -> dict[str, Any]:
    """A ``status`` stream event built from a resource that ended (for runs whose stream holds
    no terminal event: failed by the operator before any worker took them)."""
    status = run.get("status") or {}
    event: dict[str, Any] = {"type": streams.STATUS, "status": phase_of(run).lower(), "source": "resource"}
    for field in ("reason", "message", "iterations", "usage"):
        if status.get(field) not in (None, "", {}):
            event[field] = status[field]
    return event


def ends_stream(event: dict[str, Any]) -> bool:
    """Whether ``event`` is the last of a stream: a terminal status, or the gateway's final
    status of a run that ended without one (``source``) or was deleted."""
    if event.get("type") != streams.STATUS:
        return False
    return streams.is_terminal(event) or "source" in event or event.get("status") == "deleted"
