"""The execution lease on a real Redis: one holder, renewed only by its holder, expiring."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from agentrun_worker.leases import Lease


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_only_one_of_two_concurrent_deliveries_gets_the_lease(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    a, b = Lease(client, uid, "worker-a", 5), Lease(client, uid, "worker-b", 5)
    results = await asyncio.gather(a.acquire(), b.acquire())
    assert sorted(results) == [False, True]
    await a.release()
    await b.release()


async def test_a_lease_expires_when_its_holder_stops_renewing(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    a, b = Lease(client, uid, "worker-a", 0.2), Lease(client, uid, "worker-b", 5)
    assert await a.acquire()
    assert not await b.acquire()
    await asyncio.sleep(0.3)
    assert await b.acquire()
    # the old holder can neither renew nor release the new holder's lease
    assert not await a.renew()
    await a.release()
    assert await b.holder() == "worker-b"
    assert await b.renew()
    await b.release()
    assert await b.holder() is None
