"""WorkerPool handlers: an in-memory index of pools and their queues, and the pool status.

The index (kopf keeps it current from the watch stream) lets the AgentRun dispatcher find a
run's queue without an API call. The Deployment and autoscaling of a pool are built by the
scaling part of the operator; this module only tells which queue a pool serves.
"""

from __future__ import annotations

from typing import Any

import kopf

from agentrun import message


@kopf.index("agentrun.io", "v1alpha1", "workerpools")
def pool_queues(*, namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], str]:
    assert namespace is not None  # WorkerPools are namespaced
    return {(namespace, name): message.queue_name(namespace, name)}


@kopf.on.resume("agentrun.io", "v1alpha1", "workerpools")
@kopf.on.create("agentrun.io", "v1alpha1", "workerpools")
async def report_queue(
    *, namespace: str | None, name: str, meta: kopf.Meta, patch: kopf.Patch, **_: Any
) -> None:
    assert namespace is not None
    patch.status["queue"] = message.queue_name(namespace, name)
    patch.status["observedGeneration"] = meta.get("generation")
