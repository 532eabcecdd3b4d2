"""Watching for a stop request while a run executes.

Subscribe to the run's control channel first, then read the durable flag: a stop requested
before the subscription is seen in the flag, one requested after it arrives as a message.
Either way :attr:`StopWatch.requested` is set and the execution cancels the agent.

The AgentRun's ``spec.stop: true`` is the record of last resort: Redis keeps nothing on disk,
so a restart erases the flag, and a stop set with ``kubectl`` while the operator is down
never reaches Redis. The execution reads ``spec.stop`` when it admits the run and at every
heartbeat, and calls :meth:`StopWatch.request` when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog

from agentrun import control, keys, reasons

logger = structlog.get_logger(__name__)

def explain(reason: str) -> str:
    """The status message of a run stopped for ``reason``."""
    if reason == reasons.Reason.RUN_DELETED:
        return "stopped because its AgentRun was deleted"
    if reason == reasons.Reason.INTERRUPTED:
        return "interrupted by a new run on its thread"
    return "stopped on request"


class StopWatch:
    def __init__(self, client: aioredis.Redis, uid: str) -> None:
        self._client = client
        self._uid = uid
        self.requested = asyncio.Event()
        self.reason: str | None = None
        self._pubsub = client.pubsub()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pubsub.subscribe(keys.control(self._uid))
        self._task = asyncio.get_running_loop().create_task(self._listen())
        await self.check()

    async def check(self) -> bool:
        reason = await control.stop_requested(self._client, self._uid)
        if reason is not None:
            self.reason = reason
            self.requested.set()
        return self.requested.is_set()

    def request(self, reason: str) -> None:
        """A stop learned elsewhere than Redis (the resource's ``spec.stop``): same effect."""
        if not self.requested.is_set():
            logger.info("run.stop_from_resource", reason=reason)
            self.reason = reason
            self.requested.set()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") == "message":
                        await self.check()
                        if not self.requested.is_set():  # a wake-up without the flag: honour it anyway
                            self.reason = reasons.Reason.STOP_REQUESTED
                            self.requested.set()
                        return
                    delay = 0.1
            except Exception as exc:  # Redis restarted or the connection dropped: subscribe again
                logger.warning("run.stop_watch_reconnecting", error=str(exc), retry_in_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self._pubsub.subscribe(keys.control(self._uid))
                    if await self.check():  # a stop requested while the subscription was down
                        return
                except Exception as again:
                    logger.debug("run.stop_watch_resubscribe_failed", error=str(again))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._pubsub.unsubscribe()
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
