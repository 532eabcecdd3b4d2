"""The recovery scan: one background task that finds runs nobody is taking care of.

Started by ``startup`` (one task per operator, cancelled on clean-up), it walks the in-memory
index of live AgentRuns every ``scan_interval_seconds``. No kopf timers or daemons per run:
those add a finalizer to every AgentRun, and a finalizer makes a delete hang while the
operator is down.

What one scan does:

- **Lost workers.** The lease of every ``Running``/``Stopping`` run is checked with one
  pipelined Redis round trip. A worker takes the lease *before* it writes ``Running`` and
  releases it only *after* the terminal phase is written, so a live run without a lease has
  no worker. There is therefore no grace scan: the first scan that sees the lease missing
  acts — except within one lease TTL of a Redis restart, which loses leases that were never
  given up: their workers take them back first. To close the one remaining race (a late
  redelivery of the same attempt taking the lease between the check and the write) the
  operator claims the lease itself (``SET NX``) before it re-reads the run and writes, and
  releases it before it publishes. The run is
  re-queued as ``attempt + 1`` (a new message id) up to ``spec.maxAttempts``, then ends
  ``Failed``/``WorkerLost``. A lost run with a pending stop request ends ``Stopped``: the
  user asked for it to end, and its worker can no longer say so.
- **Lost messages.** A ``Queued`` run no worker took within ``queued_timeout_seconds`` (from
  ``status.queuedAt`` or the last re-publish) gets its message published again with the same
  attempt and id; a duplicate is dropped by the worker's lease and state checks. A run that
  waits for its thread (its ``agentrun:{uid}:waiting`` mark is fresh) is not lost: a worker
  polls it.
- **Deadlines.** A run still ``Queued`` ``spec.timeoutSeconds`` after its creation ends
  ``Failed``/``DeadlineExceeded`` (a running run's deadline is enforced by its worker); a lost
  run past its deadline is not re-queued but ends the same way.
- **Deleted pools.** A ``Pending``/``Queued`` run whose WorkerPool has been gone for
  ``pool_missing_grace_seconds`` ends ``Failed``/``PoolDeleted``: no worker will ever consume
  its queue. The grace lets a pool be deleted and created again (same queue) without loss.
- **TTL.** A finished run with ``spec.ttlSecondsAfterFinished`` is deleted that long after
  ``status.finishedAt`` (its database row stays, its Redis keys expire on their own), at the
  first scan after the TTL: no timer, so no finalizer.

When the operator ends a run itself it writes what a worker would: the database row, then
the resource, then the terminal ``status`` event on the run's stream (so readers stop
waiting), and posts an Event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import dramatiq
import kopf
import lightkube
import redis.asyncio as aioredis
import structlog

from agentrun import ending, keys, kube, message, phases, reasons, store, streams, timestamps, views
from agentrun import settings as agentrun_settings
from agentrun_operator import config, dispatching, eventing, metrics, workflows

logger = structlog.get_logger(__name__)


# Release the operator's claim on a lease only if it is still the operator's.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


@dataclasses.dataclass(frozen=True)
class RunView:
    """What the scan needs to know about one AgentRun, kept current by a kopf index."""

    uid: str
    namespace: str
    name: str
    phase: str
    pool: str
    attempt: int
    max_attempts: int
    created_at: str | None
    queued_at: str | None
    timeout_seconds: int | float | None = None
    finished_at: str | None = None
    ttl_after_finished: int | None = None


def view(body: kopf.Body) -> RunView | None:
    """The index entry of an AgentRun, or None when the scan has nothing to do with it
    (not dispatched yet, or finished without a TTL)."""
    run = views.AgentRun(body)
    phase, ttl = run.status.phase, run.spec.ttl_after_finished
    if not phase or not run.uid or not run.namespace:
        return None
    if phases.is_terminal(phase) and ttl is None:
        return None
    timeout = run.spec.timeout_seconds
    return RunView(
        uid=run.uid,
        namespace=run.namespace,
        name=run.name,
        phase=phase,
        pool=run.spec.pool,
        attempt=run.status.attempt or 1,
        max_attempts=run.spec.max_attempts,
        created_at=run.created_at,
        queued_at=run.status.queued_at,
        timeout_seconds=timeout,
        finished_at=run.status.finished_at,
        ttl_after_finished=ttl,
    )


def past_deadline(v: RunView, now: float) -> bool:
    age = timestamps.age_seconds(v.created_at, now)
    return v.timeout_seconds is not None and age is not None and age >= v.timeout_seconds


class Scanner:
    """The scan loop and what it does to the runs it finds. One per operator process."""

    def __init__(
        self,
        *,
        runs: kopf.Index[str, RunView],
        pools: kopf.Index[tuple[str, str], str],
        api: lightkube.AsyncClient,
        redis: aioredis.Redis,
        dramatiq_broker: dramatiq.Broker,
        db: store.Store | None,
        settings: agentrun_settings.Settings,
        op: config.OperatorSettings,
    ) -> None:
        self._runs = runs
        self._pools = pools
        self._pool_missing: dict[tuple[str, str], float] = {}
        self._api = api
        self._redis = redis
        self._broker = dramatiq_broker
        self._db = db
        self._settings = settings
        self._op = op
        self._claim = f"operator/{settings.instance_id}"
        self._release = redis.register_script(_RELEASE)
        self._republished: dict[tuple[str, int], float] = {}
        self.scans = 0

    async def run_forever(self) -> None:
        while True:
            try:
                await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a scan must never kill the loop; the next one retries
                metrics.RECONCILE_ERRORS.labels("scan").inc()
                logger.exception("scan.failed", error=str(exc))
            await asyncio.sleep(self._op.scan_interval_seconds)

    def _views(self) -> list[RunView]:
        return [v for _, found in self._runs.items() for v in found]

    async def scan_once(self) -> None:
        runs = self._views()
        now = time.time()
        live = [v for v in runs if phases.is_active(v.phase)]
        if live and await self._redis_just_restarted():
            live = []  # its workers are taking their leases back (agentrun_worker.leases.Lease.reclaim)
        if live:
            pipe = self._redis.pipeline(transaction=False)
            for v in live:
                pipe.exists(keys.lease(v.uid))
                pipe.exists(keys.stop(v.uid))
            found = await pipe.execute()
            for i, v in enumerate(live):
                if not found[2 * i]:
                    await self._guarded("recover", v, self.recover(v, stop_requested=bool(found[2 * i + 1])))
        for v in runs:
            if phases.is_terminal(v.phase):
                finished = timestamps.epoch(v.finished_at)
                if v.ttl_after_finished is not None and finished is not None and now - finished >= v.ttl_after_finished:
                    await self._guarded("delete", v, self.delete(v))
            elif phases.is_unstarted(v.phase) and past_deadline(v, now):
                await self._guarded("deadline", v, self.expire(v))
            elif phases.is_unstarted(v.phase) and self._pool_gone(v, now):
                await self._guarded("pool_deleted", v, self.expire(v, pool_deleted=True))
            elif v.phase == phases.Phase.QUEUED:
                since = max(timestamps.epoch(v.queued_at) or now, self._republished.get((v.uid, v.attempt), 0.0))
                if now - since >= self._op.queued_timeout_seconds:
                    await self._guarded("republish", v, self.republish(v))
        waiting = {(v.namespace, v.pool) for v in runs if phases.is_unstarted(v.phase)}
        for pool in [k for k in self._pool_missing if k not in waiting or k in self._pools]:
            del self._pool_missing[pool]
        current = {(v.uid, v.attempt) for v in runs}
        for key in [k for k in self._republished if k not in current]:
            del self._republished[key]
        self.scans += 1
        metrics.SCANS.inc()

    def _pool_gone(self, v: RunView, now: float) -> bool:
        """Whether the run's pool has been missing from the pool index for the whole grace."""
        key = (v.namespace, v.pool)
        if key in self._pools:
            return False
        since = self._pool_missing.setdefault(key, now)
        return now - since >= self._op.pool_missing_grace_seconds
    async def _redis_just_restarted(self) -> bool:
        """Whether Redis has been up for less than a lease TTL: then a missing lease may have
        been lost by a restart (or a failover) rather than given up, and its worker gets one
        TTL to take it back before the run counts as lost. Unknown (INFO refused, a stand-in
        without uptime) counts as not restarted."""
        try:
            info: Any = await self._redis.info("server")
            uptime = float(info["uptime_in_seconds"])
        except Exception:
            return False
        if uptime < self._settings.lease_ttl_seconds:
            logger.info("scan.lost_workers_deferred", why="Redis restarted recently", redis_uptime_seconds=uptime)
            return True
        return False

    async def _guarded(self, action: str, v: RunView, work: Any) -> None:
        try:
            await work
        except Exception as exc:  # one run's trouble must not stop the scan of the others
            metrics.RECONCILE_ERRORS.labels(f"scan.{action}").inc()
            logger.exception("scan.action_failed", action=action, run_id=v.uid, namespace=v.namespace,
                             name=v.name, error=str(exc))

    async def _get(self, v: RunView) -> views.AgentRun | None:
        """The run as the API server has it now, if it is still the object ``v`` describes."""
        try:
            obj = kube.to_dict(await self._api.get(kube.AgentRun, v.name, namespace=v.namespace))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                return None
            raise
        run = views.AgentRun(obj)
        return run if run.is_run(v.uid) else None

    # -- lost workers ---------------------------------------------------------------------------

    async def recover(self, v: RunView, *, stop_requested: bool) -> None:
        """A live run without a lease: re-queue it, or end it when no attempt is left."""
        log = logger.bind(run_id=v.uid, namespace=v.namespace, name=v.name, attempt=v.attempt)
        lease = keys.lease(v.uid)
        claim_ms = int(self._op.requeue_claim_seconds * 1000)
        if not await self._redis.set(lease, self._claim, nx=True, px=claim_ms):
            return  # a worker holds the lease again (a redelivery took the run): nothing is lost
        requeue: views.AgentRun | None = None
        try:
            run = await self._get(v)
            if run is None or not run.runs_attempt(v.uid, v.attempt, phases.ACTIVE):
                return  # it moved on since the index saw it
            worker = run.status.worker_instance or "unknown"
            if stop_requested:
                text = f"stopped on request; its worker {worker} was lost before it confirmed the stop"
                await self.finish(run, phases.Phase.STOPPED, reasons.Reason.STOP_REQUESTED, text, attempt=v.attempt)
                metrics.RECOVERIES.labels(reasons.Reason.WORKER_LOST, "stopped").inc()
                log.warning("run.recovered", action="stopped", worker=worker)
            elif past_deadline(v, time.time()):
                text = (f"the run exceeded timeoutSeconds={v.timeout_seconds} "
                        f"(its worker {worker} was lost on attempt {v.attempt})")
                await self.finish(run, phases.Phase.FAILED, reasons.Reason.DEADLINE_EXCEEDED, text, attempt=v.attempt)
                metrics.RECOVERIES.labels(reasons.Reason.DEADLINE_EXCEEDED, "failed").inc()
                log.warning("run.recovered", action="deadline", worker=worker)
            elif v.attempt >= v.max_attempts:
                text = (f"the worker was lost on attempt {v.attempt} of {v.max_attempts} "
                        f"(last worker {worker}); no attempts left")
                await self.finish(run, phases.Phase.FAILED, reasons.Reason.WORKER_LOST, text, attempt=v.attempt)
                metrics.RECOVERIES.labels(reasons.Reason.WORKER_LOST, "failed").inc()
                log.warning("run.recovered", action="failed", worker=worker)
            else:
                requeue = await self._mark_requeued(v, worker)
        finally:
            await self._release(keys=[lease], args=[self._claim])
        if requeue is not None:
            # Published only after the claim is released: the new attempt's worker must be
            # able to take the lease. The resource already says attempt + 1, so a late
            # redelivery of the old attempt is dropped as stale.
            await self._publish(requeue)
            text = f"worker lost on attempt {v.attempt}; re-queued as attempt {v.attempt + 1} of {v.max_attempts}"
            await eventing.warn(self._api, dict(requeue.raw), reason=reasons.Reason.WORKER_LOST, message=text)
            metrics.RECOVERIES.labels(reasons.Reason.WORKER_LOST, "requeued").inc()
            log.warning("run.recovered", action="requeued", new_attempt=v.attempt + 1)

    async def _mark_requeued(self, v: RunView, worker: str) -> views.AgentRun | None:
        text = f"worker {worker} lost on attempt {v.attempt}; re-queued as attempt {v.attempt + 1}"
        moved = await kube.transition(
            self._api, v.namespace, v.name, phases.Phase.QUEUED, attempt=v.attempt + 1, uid=v.uid,
            fields={
                "queuedAt": kube.now_precise(),
                "reason": reasons.Reason.WORKER_LOST,
                "message": text,
                "workerInstance": None,
                "startedAt": None,
                "lastHeartbeatTime": None,
            },
            condition=("Dispatched", "True", reasons.Reason.REQUEUED, text),
        )
        return None if moved is None else views.AgentRun(moved)

    async def _publish(self, run: views.AgentRun) -> str:
        spec = await workflows.resolve_for_republish(self._api, run.namespace, dict(run.spec.raw))
        payload = message.for_run(run, attempt=run.status.attempt,
                                  queued_at=run.status.queued_at or kube.now_precise(), spec=spec)
        return await dispatching.publish(self._broker, message.queue_of(run), payload)

    # -- lost messages --------------------------------------------------------------------------

    async def republish(self, v: RunView) -> None:
        """Publish a long-``Queued`` run's message again: same attempt, same message id."""
        run = await self._get(v)
        if run is None or not run.runs_attempt(v.uid, v.attempt, frozenset({phases.Phase.QUEUED})):
            return
        self._republished[(v.uid, v.attempt)] = time.time()
        if await self._redis.exists(keys.waiting(v.uid)):  # waiting for its thread: a worker polls it
            return
        message_id = await self._publish(run)
        text = (f"no worker took attempt {v.attempt} within {self._op.queued_timeout_seconds:g}s; "
                "its message was published again")
        await eventing.warn(self._api, dict(run.raw), reason=reasons.Reason.REPUBLISHED, message=text)
        metrics.RECOVERIES.labels("MessageLost", "republished").inc()
        logger.warning("run.republished", run_id=v.uid, namespace=v.namespace, name=v.name,
                       attempt=v.attempt, message_id=message_id)

    # -- lifecycle ------------------------------------------------------------------------------

    async def expire(self, v: RunView, *, pool_deleted: bool = False) -> None:
        """A run that never started within ``timeoutSeconds`` ends ``Failed``/``DeadlineExceeded``
        (or ``Failed``/``PoolDeleted`` when its pool is gone).

        The lease is claimed first so that no worker starts it while it is being ended; a
        worker that gets its message later finds it terminal and drops it.
        """
        lease = keys.lease(v.uid)
        if not await self._redis.set(lease, self._claim, nx=True, px=int(self._op.requeue_claim_seconds * 1000)):
            return  # a worker is starting it right now: its own deadline applies
        try:
            run = await self._get(v)
            if run is None or not phases.is_unstarted(run.status.phase):
                return
            if pool_deleted:
                reason = reasons.Reason.POOL_DELETED
                text = (f"WorkerPool {v.pool} was deleted while the run waited in its queue; "
                        "create the pool again and re-submit the run")
            else:
                reason = reasons.Reason.DEADLINE_EXCEEDED
                text = f"no worker started the run within timeoutSeconds={v.timeout_seconds}"
            await self.finish(run, phases.Phase.FAILED, reason, text, attempt=run.status.attempt or v.attempt)
            metrics.RECOVERIES.labels(reason, "failed").inc()
            logger.warning("run.expired", reason=reason, run_id=v.uid, namespace=v.namespace, name=v.name,
                           pool=v.pool)
        finally:
            await self._release(keys=[lease], args=[self._claim])

    async def delete(self, v: RunView) -> None:
        """Delete a finished run whose ``ttlSecondsAfterFinished`` has passed."""
        if await self._get(v) is None:
            return  # gone already, or replaced by a new object of the same name
        try:
            await self._api.delete(kube.AgentRun, v.name, namespace=v.namespace)
        except kube.ApiError as exc:
            if not kube.is_not_found(exc):
                raise
        metrics.RUNS_DELETED.inc()
        logger.info("run.deleted", run_id=v.uid, namespace=v.namespace, name=v.name, why="ttlSecondsAfterFinished",
                    ttl_seconds=v.ttl_after_finished)

    # -- ending a run the operator's way --------------------------------------------------------

    async def finish(self, run: views.AgentRun, phase: phases.Phase, reason: reasons.Reason, text: str, *,
                     attempt: int) -> bool:
        """End a run no worker will end (:func:`agentrun.ending.finish`: database, resource,
        terminal stream event), then post its Event."""
        eventing.ended_here(run.uid)  # its Event is posted below, not again by the watch
        moved = await ending.finish(
            ending.RunRef(uid=run.uid, namespace=run.namespace, name=run.name, attempt=attempt,
                          thread_id=run.thread_id),
            ending.Ending(phase=phase, reason=reason, message=text),
            api=self._api, db=self._db, redis=self._redis, key_ttl_seconds=self._settings.key_ttl_seconds,
            writer=streams.StreamWriter(self._redis, run.uid, maxlen=self._settings.stream_maxlen),
            record=dispatching.record_of(run, attempt),
        )
        if moved is None:
            return False
        await eventing.warn(self._api, moved, reason=reason, message=text)
        return True
