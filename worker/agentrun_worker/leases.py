"""The execution lease of a run: who executes it, for as long as that process lives.

``SET agentrun:{uid}:lease <instance> NX PX <ttl>`` makes one delivery the executor; a
duplicate delivery finds the lease taken and does nothing. The holder renews it every
``lease_renew_seconds``; renewal and release are compare-and-set scripts, so a worker never
extends or deletes a lease that expired and was taken by another one. When the holder
dies, the lease expires and the operator learns the worker is gone.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from agentrun import keys

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, client: aioredis.Redis, uid: str, owner: str, ttl_seconds: float) -> None:
        self._client = client
        self._key = keys.lease(uid)
        self._owner = owner
        self._ttl_ms = int(ttl_seconds * 1000)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        return bool(await self._client.set(self._key, self._owner, nx=True, px=self._ttl_ms))

    async def renew(self) -> bool:
        """Extend the lease; False means it is no longer ours."""
        return bool(await self._renew(keys=[self._key], args=[self._owner, self._ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self._key], args=[self._owner])

    async def holder(self) -> str | None:
        value = await self._client.get(self._key)
        return value.decode() if isinstance(value, bytes) else value
