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

What to do is decided by :mod:`agentrun_operator.decisions` (pure functions over the index,
the lease check and a clock passed in); this module gathers what they need and carries the
actions out. When the operator ends a run itself it does so through
:func:`agentrun.ending.finish`, as a worker does: the database row, then the resource, then
the terminal ``status`` event on the run's stream (so readers stop waiting); then it posts an
Event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dramatiq
import kopf
import lightkube
import redis.asyncio as aioredis
import structlog

from agentrun import ending, keys, kube, message, phases, reasons, store, streams, views
from agentrun import settings as agentrun_settings
from agentrun_operator import config, decisions, dispatching, eventing, metrics, workflows

logger = structlog.get_logger(__name__)

# Release the operator's claim on a lease only if it is still the operator's.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Scanner:
    """The scan loop and what it does to the runs it finds. One per operator process."""

    def __init__(
        self,
        *,
        runs: kopf.Index[str, decisions.RunView],
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

    def _views(self) -> list[decisions.RunView]:
        return [v for _, found in self._runs.items() for v in found]

    async def scan_once(self) -> None:
        """Gather what the decision needs (the index, one Redis round trip), decide, act."""
        runs = self._views()
        plan = decisions.scan(
            runs, now=time.time(), leases=await self._leases(runs), pools=self._pools,
            pool_missing=self._pool_missing, republished=self._republished,
            queued_timeout_seconds=self._op.queued_timeout_seconds,
            pool_missing_grace_seconds=self._op.pool_missing_grace_seconds,
        )
        self._pool_missing, self._republished = plan.pool_missing, plan.republished
        for action in plan.actions:
            await self._guarded(action)
        self.scans += 1
        metrics.SCANS.inc()

    async def _leases(self, runs: list[decisions.RunView]) -> decisions.Leases | None:
        """Which live runs have a lease and a stop request: one pipelined round trip. None
        right after a Redis restart (their workers are taking their leases back,
        ``agentrun_worker.leases.Lease.reclaim``)."""
        live = [v for v in runs if phases.is_active(v.phase)]
        if not live:
            return decisions.Leases(held={}, stop_requested={})
        if await self._redis_just_restarted():
            return None
        pipe = self._redis.pipeline(transaction=False)
        for v in live:
            pipe.exists(keys.lease(v.uid))
            pipe.exists(keys.stop(v.uid))
        found = await pipe.execute()
        return decisions.Leases(held={v.uid: bool(found[2 * i]) for i, v in enumerate(live)},
                                stop_requested={v.uid: bool(found[2 * i + 1]) for i, v in enumerate(live)})

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

    async def _guarded(self, action: decisions.ScanAction) -> None:
        v = action.run
        match action:
            case decisions.Recover(stop_requested=stop_requested):
                name, work = "recover", self.recover(v, stop_requested=stop_requested)
            case decisions.Expire(pool_deleted=True):
                name, work = "pool_deleted", self.expire(v, pool_deleted=True)
            case decisions.Expire():
                name, work = "deadline", self.expire(v)
            case decisions.Republish():
                name, work = "republish", self.republish(v)
            case decisions.Delete():
                name, work = "delete", self.delete(v)
        try:
            await work
        except Exception as exc:  # one run's trouble must not stop the scan of the others
            metrics.RECONCILE_ERRORS.labels(f"scan.{name}").inc()
            logger.exception("scan.action_failed", action=name, run_id=v.uid, namespace=v.namespace,
                             name=v.name, error=str(exc))

    async def _get(self, v: decisions.RunView) -> views.AgentRun | None:
        """The run as the API server has it now, if it is still the object ``v`` describes."""
        try:
            obj = kube.to_dict(await self._api.get(kube.AgentRun, v.name, namespace=v.namespace))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                return None
            raise
        run = views.AgentRun(obj)
        return run if run.is_run(v.uid) else None

    async def _claim_lease(self, uid: str) -> bool:
        """Hold the run's lease (``SET NX``) while acting, so no delivery starts it meanwhile."""
        return bool(await self._redis.set(keys.lease(uid), self._claim, nx=True,
                                          px=int(self._op.requeue_claim_seconds * 1000)))

    async def _release_lease(self, uid: str) -> None:
        await self._release(keys=[keys.lease(uid)], args=[self._claim])

    # -- lost workers ---------------------------------------------------------------------------

    async def recover(self, v: decisions.RunView, *, stop_requested: bool) -> None:
        """A live run without a lease: re-queue it, or end it when no attempt is left."""
        log = logger.bind(run_id=v.uid, namespace=v.namespace, name=v.name, attempt=v.attempt)
        if not await self._claim_lease(v.uid):
            return  # a worker holds the lease again (a redelivery took the run): nothing is lost
        requeued: tuple[views.AgentRun, decisions.Requeue] | None = None
        try:
            run = await self._get(v)
            if run is None or not run.runs_attempt(v.uid, v.attempt, phases.ACTIVE):
                return  # it moved on since the index saw it
            worker = run.status.worker_instance or "unknown"
            decided = decisions.recovery(v, stop_requested=stop_requested, worker=worker, now=time.time())
            if isinstance(decided, decisions.End):
                await self.finish(run, decided.phase, decided.reason, decided.message, attempt=v.attempt)
                metrics.RECOVERIES.labels(*decided.metric).inc()
                log.warning("run.recovered", action=decided.action, worker=worker)
            else:
                moved = await self._mark_requeued(v, decided)
                requeued = None if moved is None else (moved, decided)
        finally:
            await self._release_lease(v.uid)
        if requeued is not None:
            # Published only after the claim is released: the new attempt's worker must be
            # able to take the lease. The resource already says attempt + 1, so a late
            # redelivery of the old attempt is dropped as stale.
            moved, decided = requeued
            await self._publish(moved)
            await eventing.warn(self._api, dict(moved.raw), reason=reasons.Reason.WORKER_LOST, message=decided.event)
            metrics.RECOVERIES.labels(reasons.Reason.WORKER_LOST, "requeued").inc()
            log.warning("run.recovered", action="requeued", new_attempt=decided.attempt)

    async def _mark_requeued(self, v: decisions.RunView, decided: decisions.Requeue) -> views.AgentRun | None:
        moved = await kube.transition(
            self._api, v.namespace, v.name, phases.Phase.QUEUED, attempt=decided.attempt, uid=v.uid,
            fields={
                "queuedAt": kube.now_precise(),
                "reason": reasons.Reason.WORKER_LOST,
                "message": decided.message,
                "workerInstance": None,
                "startedAt": None,
                "lastHeartbeatTime": None,
            },
            condition=("Dispatched", "True", reasons.Reason.REQUEUED, decided.message),
        )
        return None if moved is None else views.AgentRun(moved)

    async def _publish(self, run: views.AgentRun) -> str:
        spec = await workflows.resolve_for_republish(self._api, run.namespace, dict(run.spec.raw))
        payload = message.for_run(run, attempt=run.status.attempt,
                                  queued_at=run.status.queued_at or kube.now_precise(), spec=spec)
        return await dispatching.publish(self._broker, message.queue_of(run), payload)

    # -- lost messages --------------------------------------------------------------------------

    async def republish(self, v: decisions.RunView) -> None:
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
        metrics.RECOVERIES.labels(reasons.Reason.MESSAGE_LOST, "republished").inc()
        logger.warning("run.republished", run_id=v.uid, namespace=v.namespace, name=v.name,
                       attempt=v.attempt, message_id=message_id)

    # -- lifecycle ------------------------------------------------------------------------------

    async def expire(self, v: decisions.RunView, *, pool_deleted: bool = False) -> None:
        """A run that never started within ``timeoutSeconds`` ends ``Failed``/``DeadlineExceeded``
        (or ``Failed``/``PoolDeleted`` when its pool is gone).

        The lease is claimed first so that no worker starts it while it is being ended; a
        worker that gets its message later finds it terminal and drops it.
        """
        if not await self._claim_lease(v.uid):
            return  # a worker is starting it right now: its own deadline applies
        try:
            run = await self._get(v)
            if run is None or not phases.is_unstarted(run.status.phase):
                return
            decided = decisions.expiry(v, pool_deleted=pool_deleted)
            await self.finish(run, decided.phase, decided.reason, decided.message,
                              attempt=run.status.attempt or v.attempt)
            metrics.RECOVERIES.labels(*decided.metric).inc()
            logger.warning("run.expired", reason=decided.reason, run_id=v.uid, namespace=v.namespace, name=v.name,
                           pool=v.pool)
        finally:
            await self._release_lease(v.uid)

    async def delete(self, v: decisions.RunView) -> None:
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
