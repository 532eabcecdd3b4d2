"""Ending a run: the one ordered write of its final state, for the worker and the operator.

A run ends ``Succeeded``, ``Failed`` or ``Stopped`` in this order, always:

1. the **database** row (the record that outlives Redis) — created first for a run that has
   none yet;
2. the **resource**'s status (phase, reason, message, ``finishedAt``, the ``Complete``
   condition), through :func:`agentrun.kube.transition`, so a phase never moves backwards;
3. the **terminal stream event**, after every event the run emitted before it, so a reader
   that sees it can trust the resource's phase is final;
4. the **TTLs** of the run's stream and stop flag.

The worker calls :func:`finish` when its run ends; the operator when it ends a run no worker
will (a lost worker on its last attempt, a deadline before any worker started, a deleted
pool, a pool or workflow that does not exist). What differs between them is passed in: the
store (the operator may have none), the stream writer (the worker's, with the run's events
in flight; a fresh one for the operator), the identity row, and what the run counted.

A transition the lifecycle refuses (the run already ended, or was replaced) writes no stream
event: whoever ended it wrote that. A resource that is gone (deleted while the run lived)
does not stop the stream event: its readers must still learn the end.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightkube
import redis.asyncio as aioredis

from agentrun import keys, kube, phases, store, streams, timestamps

RESULT_MAX = 4096
"""Characters of the final answer kept on the resource and in the database."""
MESSAGE_MAX = 1024
"""Characters of the status message kept."""


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a run ends: its final phase and reason, and what it counted on the way."""

    phase: phases.Phase
    reason: str
    """A :class:`agentrun.reasons.Reason` (its text is what is written)."""
    message: str = ""
    iterations: int | None = None
    """Set by an executor that counts them (the worker); None leaves the field alone."""
    usage: dict[str, int] | None = None
    """Token usage so far; None when nothing was counted."""
    result: str | None = None
    """The final answer (a succeeded run's), if any."""


@dataclasses.dataclass(frozen=True)
class RunRef:
    """Which run, at which attempt, on which thread."""

    uid: str
    namespace: str
    name: str
    attempt: int
    thread_id: str


def truncate(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def terminal_event(ending: Ending, attempt: int) -> dict[str, Any]:
    """The run's last stream event."""
    event: dict[str, Any] = {"type": streams.STATUS, "status": str(ending.phase).lower(),
                             "reason": str(ending.reason), "message": ending.message, "attempt": attempt}
    if ending.iterations is not None:
        event["iterations"] = ending.iterations
        event["usage"] = ending.usage or {}
    return event


def status_fields(ending: Ending) -> dict[str, Any]:
    """The resource's status fields of the end (beside phase, attempt and the condition)."""
    fields: dict[str, Any] = {"reason": str(ending.reason), "message": ending.message or None,
                              "finishedAt": timestamps.now_precise()}
    if ending.iterations is not None:
        fields["iterations"] = ending.iterations
    if ending.usage is not None:
        fields["usage"] = ending.usage
    if ending.result is not None:
        fields["result"] = ending.result
    return fields


async def finish(
    run: RunRef,
    ending: Ending,
    *,
    api: lightkube.AsyncClient,
    db: store.Store | None,
    writer: streams.StreamWriter | None,
    redis: aioredis.Redis | None,
    key_ttl_seconds: int,
    record: store.RunRecord | None = None,
    worker_instance: str | None = None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """End ``run`` as ``ending`` says (database, resource, stream event, TTLs; see above).

    ``record`` is the run's identity row, upserted first (with its thread) when the database
    may not have it yet; ``fields`` are more status fields written with the end. Without
    Redis (an operator configured without it) there is no stream to end. Returns the
    resource as patched, or None when it is gone or the lifecycle refused the transition
    (then nothing is streamed).
    """
    if not phases.is_terminal(ending.phase):
        raise ValueError(f"a run ends in a terminal phase, not {ending.phase}")
    ending = dataclasses.replace(ending, message=truncate(ending.message, MESSAGE_MAX) or "",
                                 result=truncate(ending.result, RESULT_MAX))
    succeeded = ending.phase == phases.Phase.SUCCEEDED
    if writer is not None:
        await writer.flush()  # every event of the run is stored before it is declared over
    if db is not None:
        if record is not None:
            await db.ensure_thread(record.thread_id, namespace=record.namespace)
            await db.upsert_run(record)
        await db.transition(
            run.uid, str(ending.phase), attempt=run.attempt, reason=str(ending.reason),
            error=None if succeeded else ending.message, result=ending.result, usage=ending.usage,
            finished_at=timestamps.utcnow(), worker_instance=worker_instance,
        )
    moved: dict[str, Any] | None
    try:
        moved = await kube.transition(
            api, run.namespace, run.name, ending.phase, attempt=run.attempt, uid=run.uid,
            fields={**status_fields(ending), **(fields or {})},
            condition=("Complete", "True" if succeeded else "False", str(ending.reason), ending.message),
        )
        if moved is None:
            return None
    except kube.ApiError as exc:
        if not kube.is_not_found(exc):
            raise
        moved = None  # deleted while it lived: the stream's readers still learn the end
    if writer is None or redis is None:
        return moved
    writer.emit(terminal_event(ending, run.attempt))
    await writer.flush()
    pipe = redis.pipeline(transaction=False)
    for key in (keys.stream(run.uid), keys.stop(run.uid)):
        pipe.expire(key, key_ttl_seconds)
    await pipe.execute()
    return moved
