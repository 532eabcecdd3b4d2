"""Kubernetes Events for phase changes the operator makes outside a kopf handler.

Inside handlers kopf posts Events itself (``kopf.info``/``kopf.warn``); the recovery scan
runs as a background task where kopf's event queue is not available, so it posts through
the API client with this module. A failed post is logged and never fails the caller: an
Event is a notice, the phase on the resource is the record.
"""

from __future__ import annotations

import datetime
from typing import Any

import lightkube
import lightkube.codecs
import structlog

logger = structlog.get_logger(__name__)

COMPONENT = "agentrun-operator"


def manifest(obj: dict[str, Any], *, type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about ``obj`` (an AgentRun as a dict), as ``kubectl describe`` lists it."""
    meta = obj.get("metadata") or {}
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
