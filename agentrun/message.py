"""The broker message: small JSON with ids and the resolved spec the worker needs.

Built by the operator, read by the worker. It never holds a secret: model credentials live
on the WorkerPool, and ``inputFrom`` references are resolved by the worker. The Dramatiq
message id is derived from ``(uid, attempt)``, so a re-publish of the same attempt is
recognisably the same message.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic

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


def queue_name(namespace: str, pool: str) -> str:
    """The broker queue of a WorkerPool: one queue per pool."""
    return f"agentrun.{namespace}.{pool}"
