"""The lifecycle of one run on a worker, from message to final state: the driver.

Called by the ``execute_run`` actor. In order, each step done by a collaborator:

1. ``admission``: drop what must not run (a run that already ended, a stale attempt, a
   deleted resource, a duplicate delivery whose lease another worker holds).
2. ``keeping.Keeper``: hold the lease and renew it in the background, with the thread's
   owner key and a modest heartbeat on the resource.
3. ``stopping.StopWatch``: subscribe to stop requests, then read the durable flag: a stop that
   came first ends the run ``Stopped`` before the model is called.
4. ``threads``: own the conversation thread, wait for it, or end ``ThreadBusy``.
5. ``inputs``: the user message. Then ``Running`` on the resource and in the database.
6. ``runners``: the agent loop or the workflow executor (both over ``history``), driven here
   until it ends, or a stop, the deadline, a lost lease or a hand-back ends it.
7. ``agentrun.ending.finish``: the final state — ``Succeeded``, ``Failed`` (with reason and
   message: an exception is never a success) or ``Stopped`` — in the database, then on the
   resource, then as the terminal stream event; key TTLs set; then the lease released.

A run whose lease is lost (Redis lost it, or this worker stalled past the TTL) stops
writing at once: another worker may own it now. A run still executing when the worker's
shutdown grace period ends is handed back (see ``shutdown``): cancelled without a final
state, its lease marked handed back, its message published again; the next delivery resumes
it after the last turn stored in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from agentrun import broker as brokers
from agentrun import ending, kube, message, phases, reasons, settings, store, streams, timestamps, views
from agentrun_worker import (
    admission,
    inputs,
    keeping,
    leases,
    mcp,
    metrics,
    runners,
    runtime,
    shutdown,
    stopping,
    threads,
)
from agentrun_worker import outcome as run_outcome

logger = structlog.get_logger(__name__)


async def execute(raw: dict[str, Any]) -> None:
    received_at = kube.now_precise()
    msg = message.RunMessage.model_validate(raw)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        run_id=msg.uid, thread_id=msg.thread_id, namespace=msg.namespace, name=msg.name, attempt=msg.attempt
    )
    if shutdown.draining().is_set():  # taken by an idle thread after SIGTERM: leave it to another worker
        await _hand_back(msg)
        logger.info("run.deferred", why="worker shutting down")
        return
    clients = await runtime.clients()
    execution = Execution(msg, clients, runtime.config(), received_at=received_at)
    await execution.run()
    if execution.waiting:  # its thread is busy: come back later (see ``threads``)
        await _hand_back(msg, delay_seconds=runtime.worker_config().thread_poll_seconds)
    if execution.handed_back:
        # The lease is marked handed back already, so the next delivery may take it. Only
        # after the broker confirms this copy does the actor return and Dramatiq ack the old one.
        await _hand_back(msg)
        logger.info("run.handed_back", why="worker shutting down", iterations=execution.iterations)


async def _hand_back(msg: message.RunMessage, delay_seconds: float | None = None) -> None:
    """Publish the run's message again (same id), delayed past this worker's idle threads."""
    queue = runtime.config().queue
    delay_ms = int((delay_seconds or runtime.worker_config().handback_delay_seconds) * 1000)
    await asyncio.to_thread(runtime.broker().enqueue, brokers.build_message(msg, queue), delay=delay_ms)


class Execution:
    """One delivery of one run: its collaborators and the order in which they act."""

    def __init__(self, msg: message.RunMessage, clients: runtime.Clients, config: settings.Settings, *,
                 received_at: str) -> None:
        self.msg = msg
        self.received_at = received_at
        self.c = clients
        self.config = config
        self.lease = leases.Lease(clients.redis, msg.uid, config.instance_id, config.lease_ttl_seconds)
        self.writer = streams.StreamWriter(
            clients.redis, msg.uid, maxlen=config.stream_maxlen, batch_max=config.stream_batch_max
        )
        self.thread = threads.ThreadSlot(clients.redis, msg.thread_id, uid=msg.uid, namespace=msg.namespace,
                                         name=msg.name, ttl_seconds=config.lease_ttl_seconds)
        self.watch = stopping.StopWatch(clients.redis, msg.uid)
        """Started once the run is admitted; the resource's ``spec.stop`` is fed to it as well."""
        self.keeper = keeping.Keeper(msg, clients, config, lease=self.lease, thread=self.thread, watch=self.watch,
                                     iterations=lambda: None if self.runner is None else self.iterations)
        self.toolbox = mcp.Toolbox()  # the run's MCP servers, closed when the run ends in any way
        self.runner: runners.Runner | None = None
        """What is being driven, once there is one: its live outcome is the run's so far."""
        self.handed_back = False
        self.waiting = False
        self._recorded = False

    @property
    def iterations(self) -> int:
        """The iterations of the run so far (0 before its runner starts)."""
        return self.runner.outcome.iterations if self.runner is not None else 0

    async def run(self) -> None:
        if not await admission.admit(self.msg, self.c, self.lease, self.watch):
            return
        self.keeper.start()
        try:
            await self.watch.start()
            if self.watch.requested.is_set():
                await self._finish_stopped(" before it started")
                return
            if not await self._take_thread():
                return
            try:
                user_input = await inputs.resolve(self.c.api, self.msg.namespace, self.msg.spec)
            except inputs.InputError as exc:
                await self._finish(phases.Phase.FAILED, exc.reason, str(exc))
                return
            if not await self._start(user_input):
                return
            metrics.run_started(self.config.queue)
            with metrics.in_flight(self.config.queue):
                try:
                    runner = await runners.prepare(self.msg, user_input, writer=self.writer, db=self.c.store,
                                                   settings=runtime.worker_config(), toolbox=self.toolbox,
                                                   stop=self.watch.requested)
                except runners.Refused as exc:
                    await self._finish(phases.Phase.FAILED, exc.reason, str(exc))
                    return
                except mcp.Interrupted:
                    await self._finish_stopped()
                    return
                await self._drive(runner)
        finally:
            await self.toolbox.aclose()
            await self.keeper.stop()
            await self.watch.close()
            await self._let_go()

    async def _let_go(self) -> None:
        """Hand the lease and thread on: marked for the next delivery after a hand-back, released
        after a final state, untouched when lost (another worker may hold them)."""
        if self.handed_back:
            await self.lease.hand_back()
            with contextlib.suppress(Exception):
                await self.thread.renew()  # the thread waits for the run's next delivery too
        elif not self.keeper.lost.is_set():
            with contextlib.suppress(Exception):
                await self.thread.release()  # after the final state: the next run reads it all
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def _take_thread(self) -> bool:
        """Own the run's thread, or wait for it, or end ``ThreadBusy`` (``spec.multitaskStrategy``)."""
        strategy = views.RunSpec(self.msg.spec).multitask_strategy or threads.DEFAULT
        if self.msg.attempt > 1:  # a run that started before is never rejected nor interrupts: it waits
            strategy = threads.ENQUEUE
        verdict = await threads.admit(
            self.thread, self.c.redis, strategy=strategy,
            queued_at=self.msg.queued_at, poll_seconds=runtime.worker_config().thread_poll_seconds,
        )
        if verdict.verdict is threads.Verdict.REJECT:
            await self._finish(phases.Phase.FAILED, reasons.Reason.THREAD_BUSY,
                               f'thread "{self.msg.thread_id}" is busy with run {verdict.busy_with} '
                               "(multitaskStrategy: reject)")
        elif verdict.verdict is threads.Verdict.WAIT:
            self.waiting = True
            if verdict.first_wait:
                self.writer.emit({"type": streams.STATUS, "status": "waiting", "reason": reasons.Reason.THREAD_BUSY,
                                  "message": f"waiting for run {verdict.busy_with} on the same thread"})
                await self.writer.flush()
        return verdict.verdict is threads.Verdict.RUN

    def _record(self) -> store.RunRecord:
        """The run's row in the database: its identity, as queued."""
        msg = self.msg
        spec = views.RunSpec(msg.spec)
        return store.RunRecord(
            id=msg.uid, namespace=msg.namespace, name=msg.name, thread_id=msg.thread_id,
            status=str(phases.Phase.QUEUED), attempt=msg.attempt, queued_at=timestamps.parse(msg.queued_at),
            metadata={"model": spec.model, "workflow": spec.workflow_name, "workerPool": spec.pool},
        )

    async def _start(self, user_input: inputs.UserInput) -> bool:
        """``Running`` in the database and on the resource, the input stored, the first event."""
        msg = self.msg
        await self.c.store.ensure_thread(msg.thread_id, namespace=msg.namespace)
        await self.c.store.upsert_run(self._record())
        self._recorded = True
        await self.c.store.transition(
            msg.uid, str(phases.Phase.RUNNING), attempt=msg.attempt, started_at=timestamps.utcnow(),
            worker_instance=self.config.instance_id,
        )
        moved = await kube.transition(
            self.c.api, msg.namespace, msg.name, phases.Phase.RUNNING, attempt=msg.attempt, uid=msg.uid,
            fields={
                "startedAt": kube.now_precise(),
                "workerInstance": self.config.instance_id,
                "lastHeartbeatTime": kube.now(),
            },
            condition=("Running", "True", reasons.Reason.STARTED, f"running on {self.config.instance_id}"),
        )
        if moved is None:
            logger.info("run.skipped", why="resource moved on before start")
            return False
        await self.c.store.add_message(
            msg.thread_id, "user", user_input, run_id=msg.uid, message_id=f"{msg.uid}/input"
        )
        self.writer.emit({"type": streams.STATUS, "status": "running", "attempt": msg.attempt,
                          "receivedAt": self.received_at})
        logger.info("run.started")
        return True

    async def _drive(self, runner: runners.Runner) -> None:
        """Run ``runner`` until it ends, or a stop, the deadline, a lost lease or a hand-back ends it."""
        msg = self.msg
        self.runner = runner
        loop = asyncio.get_running_loop()
        task = loop.create_task(runner.run())
        stop_wait = loop.create_task(self.watch.requested.wait())
        lost_wait = loop.create_task(self.keeper.lost.wait())
        handback_wait = loop.create_task(shutdown.handback_requested().wait())
        timeout = views.RunSpec(msg.spec).timeout_seconds
        try:
            done, _ = await asyncio.wait(
                {task, stop_wait, lost_wait, handback_wait},
                timeout=float(timeout) if timeout else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop_wait.cancel()
            lost_wait.cancel()
            handback_wait.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if lost_wait in done:
                logger.error("run.abandoned", why="lease lost: another worker may own this run")
            elif stop_wait in done:  # a stop wins over a hand-back: the user asked for the run to end
                await self._finish_stopped(outcome=runner.outcome)
            elif handback_wait in done:
                await self._hand_back_in_flight()
            else:
                await self._finish(phases.Phase.FAILED, reasons.Reason.DEADLINE_EXCEEDED,
                                   f"the run exceeded timeoutSeconds={timeout}", outcome=runner.outcome)
            return
        error = task.exception()
        if error is not None:
            reason = reasons.of(error)
            text = str(error) or type(error).__name__
            logger.warning("run.agent_failed", reason=reason, error=text, exc_info=error)
            await self._finish(phases.Phase.FAILED, reason, text, outcome=runner.outcome)
            return
        result = task.result()
        await self._finish(phases.Phase.SUCCEEDED, result.reason, "", outcome=result)

    async def _hand_back_in_flight(self) -> None:
        """The worker shuts down: no final state, a ``requeued`` event (see ``shutdown``)."""
        self.handed_back = True
        await self.writer.flush()
        self.writer.emit({"type": streams.STATUS, "status": "requeued", "reason": reasons.Reason.WORKER_SHUTDOWN,
                          "attempt": self.msg.attempt, "iterations": self.iterations})
        await self.writer.flush()

    # -- the final state ------------------------------------------------------------------------

    async def _finish_stopped(self, when: str = "", *, outcome: run_outcome.Outcome | None = None) -> None:
        """End the run ``Stopped`` for the reason its stop watch learned (``when``: appended to the text)."""
        reason = self.watch.reason or reasons.Reason.STOP_REQUESTED
        await self._finish(phases.Phase.STOPPED, reason, stopping.explain(reason) + when, outcome=outcome)

    async def _finish(self, phase: phases.Phase, reason: str, text: str, *,
                      outcome: run_outcome.Outcome | None = None) -> None:
        msg = self.msg
        end = ending.Ending(
            phase=phase, reason=reason, message=text, iterations=outcome.iterations if outcome else 0,
            usage=outcome.usage if outcome else None, result=outcome.result if outcome else None,
        )
        await ending.finish(
            ending.RunRef(uid=msg.uid, namespace=msg.namespace, name=msg.name, attempt=msg.attempt,
                          thread_id=msg.thread_id),
            end, api=self.c.api, db=self.c.store, writer=self.writer, redis=self.c.redis,
            key_ttl_seconds=self.config.key_ttl_seconds, worker_instance=self.config.instance_id,
            record=None if self._recorded else self._record(),  # a run that ends before it started has no row yet
        )
        self._recorded = True
        logger.info("run.finished", phase=str(phase), reason=str(reason), iterations=end.iterations,
                    events=self.writer.count)
        metrics.run_finished(self.config.queue, str(phase), str(reason))
