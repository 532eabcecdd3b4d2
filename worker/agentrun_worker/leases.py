"""The execution lease of a run: who executes it, for as long as that process lives.

``SET agentrun:{uid}:lease <instance> NX PX <ttl>`` makes one delivery the executor; a
duplicate delivery finds the lease taken and does nothing. The holder renews it every
``lease_renew_seconds``; renewal, release and hand-back are compare-and-set transactions
(WATCH/MULTI on the one key, so they work on Redis Cluster and on the embedded Redis of
``agentrun dev``, which cannot run Lua), so a worker never extends or deletes a lease that
expired and was taken by another one. When the holder
dies, the lease expires and the operator learns the worker is gone.

A worker shutting down hands a run back (:meth:`Lease.hand_back`): the lease keeps
existing for one more TTL with the value ``handed-back:<instance>``, which the next
delivery may take over at once. Deleting it instead would tell the operator's recovery scan
that the worker was lost, and it would re-queue the run as a new attempt; if no worker takes
the run within the TTL, the lease expires and that recovery is what happens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from agentrun import keys

logger = structlog.get_logger(__name__)

HANDED_BACK = "handed-back:"

class Lease:
    def __init__(self, client: aioredis.Redis, uid: str, owner: str, ttl_seconds: float) -> None:
        self._client = client
        self._key = keys.lease(uid)
        self._owner = owner
        self._ttl_ms = int(ttl_seconds * 1000)

    async def acquire(self) -> bool:
        """Take the lease if it is free or was handed back; False if someone holds it."""
        if await self._client.set(self._key, self._owner, nx=True, px=self._ttl_ms):
            return True
        return await self._swap(lambda current: current.startswith(HANDED_BACK), self._owner)

    async def renew(self) -> bool:
        """Extend the lease; False means it is no longer ours."""
        return await self._swap(lambda current: current == self._owner, self._owner)

    async def reclaim(self, still_ours: Callable[[], Awaitable[bool]]) -> bool:
        """Take the lease again when it is *gone*, if the run is still this execution's.

        Redis can lose a lease its holder never gave up: a restart without persistence, a
        failover to a replica that had not received it. A missing key alone cannot tell that
        apart from a lease that expired while this worker stalled, after which the operator may
        have re-queued the run (it claims the lease, writes ``attempt + 1`` on the resource,
        then releases it). So the key is taken first (``SET NX``; if anyone holds it, it is
        theirs) and ``still_ours`` (the resource still at this attempt, running) is asked
        after: whichever order the operator's steps fall in, one of the two checks sees them.
        """
        if not await self._client.set(self._key, self._owner, nx=True, px=self._ttl_ms):
            return False
        try:
            if await still_ours():
                return True
        except BaseException:
            await self.release()
            raise
        await self.release()
        return False

    async def release(self) -> None:
        await self._swap(lambda current: current == self._owner, None)

    async def hand_back(self) -> bool:
        """Mark the lease handed back (if it is still ours) so the next delivery may take it."""
        return await self._swap(lambda current: current == self._owner, HANDED_BACK + self._owner)

    async def _swap(self, allowed: Callable[[str], bool], value: str | None) -> bool:
        """Set the lease to ``value`` (with a fresh TTL; ``None`` deletes it) if its current
        value is ``allowed``, in one WATCH/MULTI transaction on the lease key."""
        async with self._client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._key)
                raw = await pipe.get(self._key)
                current = raw.decode() if isinstance(raw, bytes) else raw
                if current is None or not allowed(current):
                    return False
                pipe.multi()  # type: ignore[no-untyped-call,unused-ignore]
                if value is None:
                    pipe.delete(self._key)
                else:
                    pipe.set(self._key, value, px=self._ttl_ms)
                await pipe.execute()
                return True
            except redis.exceptions.WatchError:  # changed meanwhile: someone else acted first
                return False

    async def holder(self) -> str | None:
        value = await self._client.get(self._key)
        return value.decode() if isinstance(value, bytes) else value


async def renew_or_reclaim(lease: Lease, still_ours: Callable[[], Awaitable[bool]]) -> bool:
    """Renew the lease, or take it back if Redis lost it (:meth:`Lease.reclaim`); whether it is held."""
    if await lease.renew():
        return True
    if await lease.reclaim(still_ours):
        logger.warning("run.lease_reclaimed", why="the lease was gone from Redis (a restart or failover lost it)")
        return True
    return False


def expired_by_next_tick(since_renewal: float, config: Any) -> bool:
    """Whether the lease, last renewed ``since_renewal`` seconds ago, may expire before the next
    renewal try: then the holder must stop writing, since the operator may give the run to
    another worker once it expires."""
    return bool(since_renewal + config.lease_renew_seconds >= config.lease_ttl_seconds)
