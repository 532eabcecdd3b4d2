"""The lifecycle of one run on a worker, from message to final state.

Called by the ``execute_run`` actor. In order:

1. Drop what must not run: a run that already ended (database or resource), a stale attempt,
   a deleted resource, or a delivery whose lease another worker holds (duplicate).
2. Hold the lease and renew it in the background (with a modest heartbeat on the resource).
3. Subscribe to stop requests, then read the durable flag: a stop that came first ends the
   run ``Stopped`` before the model is called.
4. ``Running`` on the resource and in the database, then the agent loop with every event
   streamed to Redis.
5. The final state — ``Succeeded``, ``Failed`` (with reason and message: an exception is
   never a success) or ``Stopped`` — in the database, then on the resource, then as the
   terminal stream event; key TTLs set; the lease released.

A run whose lease is lost (Redis lost it, or this worker stalled past the TTL) stops
writing at once: another worker may own it now. A run still executing when the worker's
shutdown grace period ends is handed back (see ``shutdown``): cancelled without a final
state, its lease marked handed back, its message published again; the next delivery resumes
it after the last turn stored in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from typing import Any

import structlog

from agentrun import broker as brokers
from agentrun import control, ending, kube, message, phases, reasons, store, streams, timestamps, views
from agentrun_worker import (
    agent,
    history,
    leases,
    mcp,
    providers,
    runtime,
    shutdown,
    stopping,
    threads,
    tools,
    workflows,
)
from agentrun_worker.providers import base as providers_base

logger = structlog.get_logger(__name__)



class End(enum.Enum):
    DONE = "done"
    STOPPED = "stopped"
    LEASE_LOST = "lease_lost"


class InputError(Exception):
    reason = reasons.Reason.INPUT_NOT_FOUND


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
    def __init__(self, msg: message.RunMessage, clients: runtime.Clients, config: Any, *, received_at: str) -> None:
        self.msg = msg
        self.received_at = received_at
        self.c = clients
        self.config = config
        self.lease = leases.Lease(clients.redis, msg.uid, config.instance_id, config.lease_ttl_seconds)
        self.writer = streams.StreamWriter(
            clients.redis, msg.uid, maxlen=config.stream_maxlen, batch_max=config.stream_batch_max
        )
        self.lease_lost = asyncio.Event()
        self.runner: agent.AgentLoop | workflows.Executor | None = None
        """The loop being driven, once there is one: its live outcome is the run's so far."""
        self.handed_back = False
        self.waiting = False
        self.thread = threads.ThreadSlot(clients.redis, msg.thread_id, uid=msg.uid, namespace=msg.namespace,
                                         name=msg.name, ttl_seconds=config.lease_ttl_seconds)
        self._recorded = False
        self.watch = stopping.StopWatch(clients.redis, msg.uid)
        """Started once the run is admitted; the resource's ``spec.stop`` is fed to it as well."""
        self.toolbox = mcp.Toolbox()  # the run's MCP servers, closed when the run ends in any way

    # -- 1. admission -------------------------------------------------------------------------

    async def _admit(self) -> bool:
        msg = self.msg
        record = await self.c.store.get_run(msg.uid)
        if record is not None and phases.is_terminal(record.status):
            logger.info("run.skipped", why="already ended", phase=record.status)
            return False
        if not await self.lease.acquire():
            logger.info("run.skipped", why="duplicate delivery: lease held", holder=await self.lease.holder())
            return False
        try:
            run = views.AgentRun(kube.to_dict(await self.c.api.get(kube.AgentRun, msg.name, namespace=msg.namespace)))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                logger.info("run.skipped", why="AgentRun deleted")
                await self.lease.release()
                return False
            await self.lease.release()
            raise
        if not run.is_run(msg.uid) or phases.is_terminal(run.status.phase):
            logger.info("run.skipped", why="AgentRun replaced or ended", phase=run.status.phase)
            await self.lease.release()
            return False
        if run.status.attempt > msg.attempt:
            logger.info("run.skipped", why="stale attempt", current=run.status.attempt)
            await self.lease.release()
            return False
        if run.spec.stop:  # its Redis flag erased by a restart, or never written
            self.watch.request(reasons.Reason.STOP_REQUESTED)
        return True

    # -- 2. lease and heartbeat ---------------------------------------------------------------

    async def _keep_lease(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self.config.heartbeat_seconds
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(self.config.lease_renew_seconds)
            try:
                held = await leases.renew_or_reclaim(self.lease, self._still_ours)
            except Exception as exc:  # Redis hiccup: try again at the next tick while the TTL covers it
                if leases.expired_by_next_tick(loop.time() - renewed_at, self.config):
                    logger.error("run.lease_lost", why="Redis unreachable as long as the lease lives", error=str(exc))
                    self.lease_lost.set()
                    return
                logger.warning("run.lease_renew_failed", error=str(exc))
                continue
            if not held:
                logger.error("run.lease_lost")
                self.lease_lost.set()
                return
            renewed_at = loop.time()
            try:
                await self.thread.renew()  # the thread stays this run's while the run lives
            except Exception as exc:  # noqa: BLE001  (a Redis hiccup: the next tick renews it)
                logger.warning("run.thread_renew_failed", error=str(exc))
            if loop.time() >= next_heartbeat:
                next_heartbeat = loop.time() + self.config.heartbeat_seconds
                await self._heartbeat()

    async def _heartbeat(self) -> None:
        """Write ``lastHeartbeatTime``; a run whose AgentRun is gone is stopped (``RunDeleted``),
        and one whose AgentRun says ``spec.stop: true`` is stopped (``StopRequested``).

        The operator turns a deletion or ``spec.stop`` into a stop request in Redis at once;
        this catches what it missed (it was down, or Redis restarted and lost the flag), since
        nothing else would end the run early.
        """
        try:
            beat: dict[str, Any] = {"lastHeartbeatTime": kube.now()}
            if self.runner is not None:  # never 0 while turns are done: the ITERATIONS column reads it
                beat["iterations"] = self.iterations
            patched = await kube.patch_status(self.c.api, self.msg.namespace, self.msg.name, beat)
            run = views.AgentRun(patched)
            if run.spec.stop and run.is_run(self.msg.uid):
                self.watch.request(reasons.Reason.STOP_REQUESTED)
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                logger.warning("run.resource_deleted")
                with contextlib.suppress(Exception):
                    await control.request_stop(self.c.redis, self.msg.uid, ttl_seconds=self.config.key_ttl_seconds,
                                               reason=reasons.Reason.RUN_DELETED)
        except Exception as exc:  # the API server's hiccup is not the run's problem
            logger.debug("run.heartbeat_failed", error=str(exc))

    async def _still_ours(self) -> bool:
        """The resource still runs this execution's attempt (see ``Lease.reclaim``)."""
        obj = kube.to_dict(await self.c.api.get(kube.AgentRun, self.msg.name, namespace=self.msg.namespace))
        return views.AgentRun(obj).runs_attempt(self.msg.uid, self.msg.attempt, phases.ACTIVE)

    @property
    def iterations(self) -> int:
        """The iterations of the run so far (0 before its loop starts)."""
        return self.runner.outcome.iterations if self.runner is not None else 0

    # -- the whole run ------------------------------------------------------------------------

    async def run(self) -> None:
        if not await self._admit():
            return
        keeper = asyncio.get_running_loop().create_task(self._keep_lease())
        try:
            await self.watch.start()
            if self.watch.requested.is_set():
                await self._finish_stopped(" before it started")
                return
            if not await self._take_thread():
                return
            try:
                user_input = await self._resolve_input()
            except InputError as exc:
                await self._finish(phases.Phase.FAILED, exc.reason, str(exc))
                return
            if not await self._start(user_input):
                return
            await self._execute(user_input)
        finally:
            await self.toolbox.aclose()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.watch.close()
            if self.handed_back:
                await self.lease.hand_back()
                with contextlib.suppress(Exception):
                    await self.thread.renew()  # the thread waits for the run's next delivery too
            elif not self.lease_lost.is_set():
                with contextlib.suppress(Exception):
                    await self.thread.release()  # after the final state: the next run reads it all
                with contextlib.suppress(Exception):
                    await self.lease.release()

    async def _take_thread(self) -> bool:
        """Own the run's thread, or wait for it, or end ``ThreadBusy`` (``spec.multitaskStrategy``)."""
        spec = self.msg.spec
        strategy = views.RunSpec(spec).multitask_strategy or threads.DEFAULT
        if self.msg.attempt > 1:  # a run that started before is never rejected nor interrupts: it waits
            strategy = threads.ENQUEUE
        admission = await threads.admit(
            self.thread, self.c.redis, strategy=strategy,
            queued_at=self.msg.queued_at, poll_seconds=runtime.worker_config().thread_poll_seconds,
        )
        if admission.verdict is threads.Verdict.REJECT:
            await self._finish(phases.Phase.FAILED, reasons.Reason.THREAD_BUSY,
                               f'thread "{self.msg.thread_id}" is busy with run {admission.busy_with} '
                               "(multitaskStrategy: reject)")
        elif admission.verdict is threads.Verdict.WAIT:
            self.waiting = True
            if admission.first_wait:
                self.writer.emit({"type": streams.STATUS, "status": "waiting", "reason": reasons.Reason.THREAD_BUSY,
                                  "message": f"waiting for run {admission.busy_with} on the same thread"})
                await self.writer.flush()
        return admission.verdict is threads.Verdict.RUN

    async def _resolve_input(self) -> str | list[dict[str, Any]]:
        """The user message: text, or content parts (``inputParts``: text and images)."""
        spec = self.msg.spec
        if spec.get("inputParts"):
            return [dict(part) for part in spec["inputParts"]]
        if "input" in spec:
            return str(spec["input"])
        ref = spec.get("inputFrom") or {}
        import lightkube.resources.core_v1 as core

        for field, resource in (("configMapKeyRef", core.ConfigMap), ("secretKeyRef", core.Secret)):
            if field in ref:
                name, key = ref[field]["name"], ref[field]["key"]
                try:
                    obj = await self.c.api.get(resource, name, namespace=self.msg.namespace)
                except kube.ApiError as exc:
                    if kube.is_not_found(exc):
                        raise InputError(f'{resource.__name__} "{name}" not found') from exc
                    raise
                data = getattr(obj, "data", None) or {}
                if key not in data:
                    raise InputError(f'key "{key}" not found in {resource.__name__} "{name}"')
                value = data[key]
                if resource is core.Secret:
                    import base64

                    value = base64.b64decode(value).decode()
                return str(value)
        return ""

    def _record(self) -> store.RunRecord:
        """The run's row in the database: its identity, as queued."""
        msg = self.msg
        spec = views.RunSpec(msg.spec)
        return store.RunRecord(
            id=msg.uid, namespace=msg.namespace, name=msg.name, thread_id=msg.thread_id,
            status=str(phases.Phase.QUEUED), attempt=msg.attempt, queued_at=timestamps.parse(msg.queued_at),
            metadata={"model": spec.model, "workflow": spec.workflow_name, "workerPool": spec.pool},
        )

    async def _record_run(self) -> None:
        """The run's thread and row in the database (identity only), once per execution."""
        if self._recorded:
            return
        await self.c.store.ensure_thread(self.msg.thread_id, namespace=self.msg.namespace)
        await self.c.store.upsert_run(self._record())
        self._recorded = True

    async def _start(self, user_input: str | list[dict[str, Any]]) -> bool:
        msg = self.msg
        started = timestamps.utcnow()
        await self._record_run()
        await self.c.store.transition(
            msg.uid, str(phases.Phase.RUNNING), attempt=msg.attempt, started_at=started,
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

    async def _execute(self, user_input: str | list[dict[str, Any]]) -> None:
        msg = self.msg
        if workflows.is_workflow(msg.spec):
            try:
                # a workflow's templates take text: image parts reach its steps as their text parts only
                text = user_input if isinstance(user_input, str) else "\n".join(
                    str(part.get("text", "")) for part in user_input if part.get("type") == "text")
                runner = await workflows.executor(msg, user_input=text, writer=self.writer, db=self.c.store,
                                                  settings=runtime.worker_config(), toolbox=self.toolbox,
                                                  stop=self.watch.requested)
            except (workflows.Refused, mcp.ServerUnavailable) as exc:
                await self._finish(phases.Phase.FAILED, exc.reason, str(exc))
                return
            except mcp.Interrupted:
                await self._finish_stopped()
                return
            await self._drive(runner)
            return
        agent_spec = dict(views.RunSpec(msg.spec).agent)
        if not isinstance(user_input, str):  # the text of content parts, for the scripted echo
            user_input = " ".join(str(p.get("text", "")) for p in user_input if p.get("type") == "text")
        try:
            provider = providers.for_agent(agent_spec, user_input, runtime.worker_config())
            registry = await mcp.registry_for(agent_spec, runtime.worker_config(), self.toolbox, self.watch.requested)
        except (providers_base.ProviderUnavailable, tools.ToolNotFound, mcp.ServerUnavailable) as exc:
            await self._finish(phases.Phase.FAILED, exc.reason, str(exc))
            return
        except mcp.Interrupted:
            await self._finish_stopped()
            return
        conversation = await history.read(self.c.store, msg.thread_id, run_id=msg.uid, attempt=msg.attempt)
        # Turns this attempt already completed (a delivery handed back by a worker that shut
        # down): the loop resumes after them instead of running them again.
        resumed = conversation.resumed_turns()
        loop = agent.AgentLoop(
            provider=provider, writer=self.writer, db=self.c.store, run_id=msg.uid, attempt=msg.attempt,
            thread_id=msg.thread_id, agent=agent_spec, history=conversation.history(),
            completed_turns=len(resumed), last_result=history.last_result(resumed), registry=registry,
        )
        if resumed:
            logger.info("run.resumed", after_iteration=len(resumed))
        await self._drive(loop)

    async def _drive(self, loop: agent.AgentLoop | workflows.Executor) -> None:
        """Run the loop until it ends, or a stop, the deadline, a lost lease or a hand-back ends it."""
        msg = self.msg
        self.runner = loop
        task = asyncio.get_running_loop().create_task(loop.run())
        stop_wait = asyncio.get_running_loop().create_task(self.watch.requested.wait())
        lost_wait = asyncio.get_running_loop().create_task(self.lease_lost.wait())
        handback_wait = asyncio.get_running_loop().create_task(shutdown.handback_requested().wait())
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
                return
            if stop_wait in done:  # a stop wins over a hand-back: the user asked for the run to end
                await self._finish_stopped(outcome=loop.outcome)
            elif handback_wait in done:
                self.handed_back = True
                await self.writer.flush()
                self.writer.emit({"type": streams.STATUS, "status": "requeued",
                                  "reason": reasons.Reason.WORKER_SHUTDOWN, "attempt": msg.attempt,
                                  "iterations": self.iterations})
                await self.writer.flush()
            else:
                await self._finish(phases.Phase.FAILED, reasons.Reason.DEADLINE_EXCEEDED,
                                   f"the run exceeded timeoutSeconds={timeout}", outcome=loop.outcome)
            return
        error = task.exception()
        if error is not None:
            reason = reasons.of(error)
            text = str(error) or type(error).__name__
            logger.warning("run.agent_failed", reason=reason, error=text, exc_info=error)
            await self._finish(phases.Phase.FAILED, reason, text, outcome=loop.outcome)
            return
        outcome = task.result()
        await self._finish(phases.Phase.SUCCEEDED, outcome.reason, "", outcome=outcome)

    # -- 5. the final state ---------------------------------------------------------------------

    async def _finish_stopped(self, when: str = "", *, outcome: agent.Outcome | None = None) -> None:
        """End the run ``Stopped`` for the reason its stop watch learned (``when``: appended to the text)."""
        reason = self.watch.reason or reasons.Reason.STOP_REQUESTED
        await self._finish(phases.Phase.STOPPED, reason, stopping.explain(reason) + when, outcome=outcome)

    async def _finish(
        self,
        phase: phases.Phase,
        reason: str,
        text: str,
        *,
        outcome: agent.Outcome | None = None,
    ) -> None:
        msg = self.msg
        result = ending.Ending(
            phase=phase, reason=reason, message=text, iterations=outcome.iterations if outcome else 0,
            usage=outcome.usage if outcome else None, result=outcome.result if outcome else None,
        )
        await ending.finish(
            ending.RunRef(uid=msg.uid, namespace=msg.namespace, name=msg.name, attempt=msg.attempt,
                          thread_id=msg.thread_id),
            result, api=self.c.api, db=self.c.store, writer=self.writer, redis=self.c.redis,
            key_ttl_seconds=self.config.key_ttl_seconds, worker_instance=self.config.instance_id,
            record=None if self._recorded else self._record(),  # a run that ends before it started has no row yet
        )
        self._recorded = True
        logger.info("run.finished", phase=str(phase), reason=str(reason), iterations=result.iterations,
                    events=self.writer.count)
