"""Kubernetes Events for phase changes the operator makes outside a kopf handler.

Inside handlers kopf posts Events itself (``kopf.info``/``kopf.warn``); the recovery scan
runs as a background task where kopf's event queue is not available, so it posts through
the API client with this module. A failed post is logged and never fails the caller: an
Event is a notice, the phase on the resource is the record.
"""

from __future__ import annotations

from typing import Any

import lightkube
import lightkube.codecs
import structlog

from agentrun import phases, timestamps, views
from agentrun_operator import recent

logger = structlog.get_logger(__name__)

COMPONENT = "agentrun-operator"


def manifest(obj: dict[str, Any], *, type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about ``obj`` (an AgentRun as a dict), as ``kubectl describe`` lists it."""
    meta = obj.get("metadata") or {}
    stamp = timestamps.now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", "agentrun.io/v1alpha1"),
            "kind": obj.get("kind", "AgentRun"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": COMPONENT},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post(api: lightkube.AsyncClient, obj: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
    try:
        await api.create(lightkube.codecs.from_dict(manifest(obj, type_=type_, reason=reason, message=message)))
    except Exception as exc:  # an Event is a notice; never let it fail a recovery
        logger.warning("event.post_failed", reason=reason, error=str(exc))


async def info(api: lightkube.AsyncClient, obj: dict[str, Any], *, reason: str, message: str) -> None:
    await post(api, obj, type_="Normal", reason=reason, message=message)


async def warn(api: lightkube.AsyncClient, obj: dict[str, Any], *, reason: str, message: str) -> None:
    await post(api, obj, type_="Warning", reason=reason, message=message)


_ENDED_HERE: recent.Recent[str] = recent.Recent(100_000)


def ended_here(uid: str) -> None:
    """The operator ended run ``uid`` and posted its Event itself: the watch must not again."""
    _ENDED_HERE.add(uid)


def phase_event(body: Any, before: str, phase: str) -> tuple[str, str, str] | None:
    """``(type, reason, message)`` of the Event for a phase change a worker made, else None.

    The operator posts the Events of what it does itself (Queued, WorkerLost, DeadlineExceeded
    of a run that never started, PoolDeleted, WorkerPoolNotFound, …); the watch posts the rest,
    so that ``kubectl describe`` lists every phase change once.
    """
    status, uid = views.RunStatus(body.status), body.metadata.uid
    if phase == phases.Phase.RUNNING:
        return "Normal", "Running", f"attempt {status.attempt or 1} running on {status.worker_instance or 'a worker'}"
    if phase == phases.Phase.STOPPING:
        return "Normal", "Stopping", "stopping on request"
    if phases.is_terminal(phase) and uid not in _ENDED_HERE:
        text = status.message or f"{phase.lower()} after {status.iterations} iterations"
        return ("Warning" if phase == phases.Phase.FAILED else "Normal"), status.reason or phase, text
    return None
