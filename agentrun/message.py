"""The broker message: small JSON with ids and the resolved spec the worker needs.

Built by the operator, read by the worker. It never holds a secret: model credentials live
on the WorkerPool, and ``inputFrom`` references are resolved by the worker. The Dramatiq
message id is derived from ``(uid, attempt)``, so a re-publish of the same attempt is
recognisably the same message.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pydantic

from agentrun import views

ACTOR_NAME = "execute_run"
"""The Dramatiq actor that executes runs (declared by the worker)."""

_NAMESPACE = uuid.UUID("6f1c1c1e-7a43-4e2f-9a3b-0a9e3b6c2d10")


class RunMessage(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    v: int = 1
    uid: str
    namespace: str
    name: str
    generation: int
    attempt: int
    thread_id: str
    queued_at: str
    spec: dict[str, Any]
    """The AgentRun spec as the API server defaulted it (never a secret value); with a
    ``workflowRef``, also ``workflow``: the AgentWorkflow's name, uid, generation and spec."""

    def message_id(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.uid}/{self.attempt}"))


def for_run(run: views.AgentRun, *, attempt: int, queued_at: str, spec: Mapping[str, Any] | None = None) -> RunMessage:
    """The message of ``run``'s ``attempt``: what every publisher sends (the operator's dispatch,
    its re-queue and re-publish; a worker hands back the message it received). ``spec`` is the
    spec to carry when it differs from the resource's (a resolved ``workflowRef``)."""
    return RunMessage(
        uid=run.uid, namespace=run.namespace, name=run.name, generation=run.generation, attempt=attempt,
        thread_id=run.thread_id, queued_at=queued_at, spec=dict(run.spec.raw if spec is None else spec),
    )


def queue_of(run: views.AgentRun) -> str:
    """The queue of the run's WorkerPool."""
    return queue_name(run.namespace, run.spec.pool)


def queue_name(namespace: str, pool: str) -> str:
    """The broker queue of a WorkerPool: one queue per pool."""
    return f"agentrun.{namespace}.{pool}"
