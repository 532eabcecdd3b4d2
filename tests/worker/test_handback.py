"""A handed-back lease on a real Redis: kept for the operator, taken over by the next delivery."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from agentrun_worker import leases

from agentrun import keys


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_a_handed_back_lease_stays_visible_and_the_next_delivery_takes_it(client: aioredis.Redis) -> None:
    # Given a lease held by a worker that shuts down
    uid = str(uuid.uuid4())
    old, new, dup = (leases.Lease(client, uid, name, 5) for name in ("worker-old", "worker-new", "worker-dup"))
    assert await old.acquire()
    # When it hands the run back
    assert await old.hand_back()
    # Then the lease still exists (the operator's scan does not take the run for lost), with a TTL
    assert await old.holder() == "handed-back:worker-old"
    assert 0 < await client.pttl(keys.lease(uid)) <= 5000
    # And the old worker can neither renew nor release it any more
    assert not await old.renew()
    await old.release()
    assert await old.holder() == "handed-back:worker-old"
    # And exactly one next delivery takes it over; a duplicate of it does not
    assert await new.acquire()
    assert not await dup.acquire()
    assert await new.holder() == "worker-new"
    await new.release()
    assert await new.holder() is None


async def test_only_the_holder_can_hand_a_lease_back(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    holder, other = leases.Lease(client, uid, "worker-a", 5), leases.Lease(client, uid, "worker-b", 5)
    assert await holder.acquire()
    assert not await other.hand_back()
    assert await holder.holder() == "worker-a"
    await holder.release()
