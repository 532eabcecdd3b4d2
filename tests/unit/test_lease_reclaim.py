"""Taking a lease back after Redis lost it, on a real Redis: only when it is gone and the run is
still this execution's; never from another holder."""

from __future__ import annotations

import types
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


async def yes() -> bool:
    return True


async def no() -> bool:
    return False


async def test_a_lease_redis_lost_is_taken_back_while_the_run_is_ours(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    lease = leases.Lease(client, uid, "worker-a", 5)
    assert await lease.acquire()
    # Given Redis lost the key (a restart without persistence)
    await client.delete(keys.lease(uid))
    # Then the holder takes it back, with a fresh TTL
    assert await leases.renew_or_reclaim(lease, yes)
    assert await lease.holder() == "worker-a" and await client.pttl(keys.lease(uid)) > 0
    await lease.release()


async def test_a_lost_lease_is_not_taken_back_when_the_run_moved_on(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    lease = leases.Lease(client, uid, "worker-a", 5)
    assert await lease.acquire()
    await client.delete(keys.lease(uid))
    # When the resource says another attempt now: the lease is given up and left free for it
    assert not await leases.renew_or_reclaim(lease, no)
    assert await lease.holder() is None


async def test_a_lease_someone_else_holds_is_never_taken(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    lease = leases.Lease(client, uid, "worker-a", 5)
    assert await lease.acquire()
    await client.set(keys.lease(uid), "operator/op-1", px=5000)  # the operator's recovery claim
    assert not await leases.renew_or_reclaim(lease, yes)
    assert await lease.holder() == "operator/op-1"
    await client.delete(keys.lease(uid))


async def test_a_failing_check_gives_the_lease_up(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    lease = leases.Lease(client, uid, "worker-a", 5)

    async def broken() -> bool:
        raise RuntimeError("API server unreachable")

    with pytest.raises(RuntimeError):
        await lease.reclaim(broken)
    assert await lease.holder() is None


def test_the_holder_stops_before_the_lease_can_expire_unrenewed() -> None:
    config = types.SimpleNamespace(lease_ttl_seconds=30.0, lease_renew_seconds=10.0)
    assert not leases.expired_by_next_tick(10.0, config)  # one failed renewal: the TTL still covers
    assert leases.expired_by_next_tick(20.0, config)  # two: the next try would come too late
