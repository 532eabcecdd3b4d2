"""Dispatching a new AgentRun: resolve its pool (and workflow), mark it Queued, publish one message.

Called by the AgentRun creation handler. The order makes restarts safe:

1. ``Queued`` (with attempt, queue time, thread and stream key) is written with a
   compare-and-swap on ``resourceVersion``; a run already further along is left alone.
2. The message is published with publisher confirms; its id is derived from
   ``(uid, attempt)``.

If the operator dies between 1 and 2, kopf has not recorded the handler as done and calls
it again, which publishes; if it dies after 2 but before kopf records success, the same
message id is published again and the worker's lease turns the second delivery into a no-op.
Once the creation is recorded, neither a restart nor a watch reconnect calls this again.
"""

from __future__ import annotations

import asyncio
import time

import dramatiq
import dramatiq.errors
import kopf
import lightkube
import redis.asyncio as aioredis
import structlog

from agentrun import broker, ending, keys, kube, message, phases, reasons, store, streams, timestamps, views
from agentrun import settings as agentrun_settings
from agentrun_operator import eventing, recent, workflows

logger = structlog.get_logger(__name__)

BROKER_RETRY_SECONDS = 5
"""Seconds before a dispatch that found the broker down is tried again."""

_published: recent.Recent[tuple[str, int]] = recent.Recent(100_000)
"""Attempts this process has published. Under load kopf may see a stale event of a run it has
just handled (its own patch not yet visible after ``consistency_timeout``) and call the
creation handler again; the run already says Queued, and this memory stops a second publish.
After a restart it is empty, so a run marked Queued but never published is published then."""


class PoolMissing(Exception):
    """The run names a WorkerPool that does not exist (yet)."""

    reason = reasons.Reason.WORKER_POOL_NOT_FOUND


def resolve_queue(pools: kopf.Index[tuple[str, str], str], namespace: str, pool: str) -> str:
    found = list(pools.get((namespace, pool), []))
    if not found:
        raise PoolMissing(f'WorkerPool "{pool}" not found in namespace "{namespace}"')
    return found[0]


async def dispatch(
    *,
    api: lightkube.AsyncClient,
    dramatiq_broker: dramatiq.Broker,
    pools: kopf.Index[tuple[str, str], str],
    body: kopf.Body,
    pool_wait_seconds: float,
    db: store.Store | None,
    redis: aioredis.Redis | None,
    settings: agentrun_settings.Settings,
) -> None:
    run = views.AgentRun(body)
    namespace, name, uid = run.namespace, run.name, run.uid
    log = logger.bind(run_id=uid, namespace=namespace, name=name)
    phase = run.status.phase
    if phases.rank(phase) > phases.rank(phases.Phase.QUEUED):
        return  # a worker has it already, or it ended
    attempt = run.status.attempt or 1
    try:
        queue = resolve_queue(pools, namespace, run.spec.pool)
        resolved = await workflows.resolve(api, namespace, dict(run.spec.raw))
    except (PoolMissing, workflows.WorkflowMissing, workflows.WorkflowInvalid) as exc:
        # What the run names may be applied just after it (kubectl apply -f dir/): wait a little
        age = timestamps.age_seconds(run.created_at, time.time()) or 0.0
        if not isinstance(exc, workflows.WorkflowInvalid) and age < pool_wait_seconds:
            await show_waiting(api, body, exc, pool_wait_seconds)
            raise kopf.TemporaryError(f"waiting: {exc}", delay=1) from None
        reason, text = exc.reason, str(exc)
        eventing.ended_here(uid)
        await ending.finish(
            ending.RunRef(uid=uid, namespace=namespace, name=name, attempt=attempt, thread_id=run.thread_id),
            ending.Ending(phase=phases.Phase.FAILED, reason=reason, message=text),
            api=api, db=db, redis=redis, key_ttl_seconds=settings.key_ttl_seconds,
            writer=None if redis is None else streams.StreamWriter(redis, uid, maxlen=settings.stream_maxlen),
            record=record_of(run, attempt), fields={"observedGeneration": run.metadata.get("generation")},
        )
        kopf.warn(body, reason=reason, message=text)
        log.warning("run.failed", reason=reason)
        return

    queued_at = run.status.queued_at or kube.now_precise()
    if phase != phases.Phase.QUEUED:
        marked = await kube.transition(
            api, namespace, name, phases.Phase.QUEUED, attempt=attempt, uid=uid,
            fields={
                "queuedAt": queued_at,
                "threadId": run.thread_id,
                "streamKey": keys.stream(uid),
                "observedGeneration": run.metadata.get("generation"),
                "reason": None,
                "message": None,
            },
            condition=("Dispatched", "True", reasons.Reason.QUEUED, f"queued on {queue}"),
            seen=dict(body),
        )
        if marked is None:
            return  # someone else moved it on in the meantime

    if phase == phases.Phase.QUEUED and (uid, attempt) in _published:
        log.debug("run.already_published", attempt=attempt)
        return
    try:
        message_id = await publish(dramatiq_broker, queue,
                                   message.for_run(run, attempt=attempt, queued_at=queued_at, spec=resolved))
    except dramatiq.errors.ConnectionError as exc:
        # The run stays Queued; kopf calls this again soon (not after its 60 s default), and
        # the same message id makes a publish that did reach the broker harmless.
        log.warning("run.publish_failed", why="broker unreachable", error=type(exc).__name__)
        raise kopf.TemporaryError(f"the broker is unreachable ({type(exc).__name__}); retrying",
                                  delay=BROKER_RETRY_SECONDS) from None
    _published.add((uid, attempt))
    kopf.info(body, reason=reasons.Reason.QUEUED, message=f"attempt {attempt} queued on {queue}")
    log.info("run.queued", queue=queue, attempt=attempt, message_id=message_id)


WAITING_REASONS = {PoolMissing: reasons.Reason.WAITING_FOR_WORKER_POOL,
                   workflows.WorkflowMissing: reasons.Reason.WAITING_FOR_WORKFLOW}


async def show_waiting(api: lightkube.AsyncClient, body: kopf.Body, missing: Exception, wait_seconds: float) -> None:
    """Say on a new run what it waits for (phase Pending, reason, ``Dispatched`` condition
    False), once: a blank phase for the whole wait told people nothing."""
    meta, status = body.metadata, body.status
    reason = WAITING_REASONS[type(missing)]
    if status.get("reason") == reason or status.get("phase") not in (None, "", phases.Phase.PENDING):
        return
    assert meta.namespace is not None and meta.name is not None
    text = f"waiting for it to be created: {missing} (the run fails after {wait_seconds:g} s)"
    await kube.transition(api, meta.namespace, meta.name, phases.Phase.PENDING, attempt=1, uid=meta.uid,
                          fields={"reason": reason, "message": text, "observedGeneration": meta.get("generation")},
                          condition=("Dispatched", "False", reason, text), seen=dict(body))


def record_of(run: views.AgentRun, attempt: int) -> store.RunRecord:
    """The database row of a run the operator ends before any worker recorded it."""
    return store.RunRecord(
        id=run.uid, namespace=run.namespace, name=run.name, thread_id=run.thread_id,
        status=str(phases.Phase.QUEUED), attempt=attempt, queued_at=timestamps.parse(run.status.queued_at),
    )


async def publish(dramatiq_broker: dramatiq.Broker, queue: str, payload: message.RunMessage) -> str:
    """Publish one run message (its id from ``(uid, attempt)``); the message id.

    Also used by the recovery scan to re-queue a run after a lost worker or a lost message.
    Publishing blocks until the broker confirms, so it runs in a thread.
    """
    return await asyncio.to_thread(broker.enqueue, dramatiq_broker, payload, queue)
