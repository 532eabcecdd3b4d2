"""Stop requests: a durable flag plus a pub/sub wake-up.

The operator (``spec.stop: true``, deletion of a live run) and later the CLI and gateway
call :func:`request_stop`. The flag is written first and survives until the run's keys
expire, so a worker that takes the message later still sees it (the seed's pub/sub-only
STOP was lost when sent before the worker subscribed). The publish only wakes a worker that
is already running; it re-reads the flag after subscribing, so the order cannot lose it.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from agentrun import keys, reasons

STOP = b"stop"


async def request_stop(
    client: aioredis.Redis, uid: str, *, ttl_seconds: int = 86_400, reason: str = reasons.Reason.STOP_REQUESTED
) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.stop(uid), reason, ex=ttl_seconds)
    pipe.publish(keys.control(uid), STOP)
    await pipe.execute()


async def stop_requested(client: aioredis.Redis, uid: str) -> str | None:
    """The stop reason if a stop was requested, else None."""
    value = await client.get(keys.stop(uid))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
