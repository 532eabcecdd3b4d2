"""Keeping a run's claim alive while it executes: the lease, the thread, the heartbeat.

Started by ``execution`` once the run is admitted, cancelled when it ends. Every
``lease_renew_seconds`` the lease is renewed (or taken back after a Redis restart, if the
resource still runs this attempt: ``leases.renew_or_reclaim``) together with the thread's
owner key; every ``heartbeat_seconds`` the resource gets ``lastHeartbeatTime`` and the
iterations so far. A lease that cannot be kept sets :attr:`Keeper.lost`: the execution stops
writing at once, since another worker may own the run now.

The heartbeat also catches what the operator missed: an AgentRun deleted while the run lives
(the patch answers 404: a ``RunDeleted`` stop is requested in Redis) and ``spec.stop: true``
that never reached Redis (the stop watch is told directly).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from agentrun import control, kube, message, phases, reasons, settings, views
from agentrun_worker import leases, runtime, stopping, threads

logger = structlog.get_logger(__name__)


class Keeper:
    def __init__(
        self,
        msg: message.RunMessage,
        clients: runtime.Clients,
        config: settings.Settings,
        *,
        lease: leases.Lease,
        thread: threads.ThreadSlot,
        watch: stopping.StopWatch,
        iterations: Callable[[], int | None],
    ) -> None:
        """``iterations`` says how many iterations the run is in (None before its loop starts)."""
        self._msg = msg
        self._c = clients
        self._config = config
        self._lease = lease
        self._thread = thread
        self._watch = watch
        self._iterations = iterations
        self.lost = asyncio.Event()
        """Set when the lease could not be kept: stop writing."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self._config.heartbeat_seconds
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(self._config.lease_renew_seconds)
            try:
                held = await leases.renew_or_reclaim(self._lease, self.still_ours)
            except Exception as exc:  # Redis hiccup: try again at the next tick while the TTL covers it
                if leases.expired_by_next_tick(loop.time() - renewed_at, self._config):
                    logger.error("run.lease_lost", why="Redis unreachable as long as the lease lives", error=str(exc))
                    self.lost.set()
                    return
                logger.warning("run.lease_renew_failed", error=str(exc))
                continue
            if not held:
                logger.error("run.lease_lost")
                self.lost.set()
                return
            renewed_at = loop.time()
            try:
                await self._thread.renew()  # the thread stays this run's while the run lives
            except Exception as exc:  # noqa: BLE001  (a Redis hiccup: the next tick renews it)
                logger.warning("run.thread_renew_failed", error=str(exc))
            if loop.time() >= next_heartbeat:
                next_heartbeat = loop.time() + self._config.heartbeat_seconds
                await self.heartbeat()

    async def heartbeat(self) -> None:
        """Write ``lastHeartbeatTime`` (and the iterations so far); a run whose AgentRun is gone
        is stopped (``RunDeleted``), and one whose AgentRun says ``spec.stop: true`` is stopped
        (``StopRequested``)."""
        msg = self._msg
        try:
            beat: dict[str, Any] = {"lastHeartbeatTime": kube.now()}
            iterations = self._iterations()
            if iterations is not None:  # never 0 while turns are done: the ITERATIONS column reads it
                beat["iterations"] = iterations
            run = views.AgentRun(await kube.patch_status(self._c.api, msg.namespace, msg.name, beat))
            if run.spec.stop and run.is_run(msg.uid):
                self._watch.request(reasons.Reason.STOP_REQUESTED)
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                logger.warning("run.resource_deleted")
                with contextlib.suppress(Exception):
                    await control.request_stop(self._c.redis, msg.uid, ttl_seconds=self._config.key_ttl_seconds,
                                               reason=reasons.Reason.RUN_DELETED)
        except Exception as exc:  # the API server's hiccup is not the run's problem
            logger.debug("run.heartbeat_failed", error=str(exc))

    async def still_ours(self) -> bool:
        """The resource still runs this execution's attempt (see ``Lease.reclaim``)."""
        obj = kube.to_dict(await self._c.api.get(kube.AgentRun, self._msg.name, namespace=self._msg.namespace))
        return views.AgentRun(obj).runs_attempt(self._msg.uid, self._msg.attempt, phases.ACTIVE)
