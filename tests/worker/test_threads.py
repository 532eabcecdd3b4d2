"""A thread's owner and line on a real Redis and on fakeredis (``agentrun dev``'s embedded Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from agentrun_worker import threads

from agentrun import keys


@pytest.fixture(params=["redis", "fakeredis"])
async def client(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c: aioredis.Redis = (aioredis.Redis.from_url(redis_url) if request.param == "redis"
                         else fakeredis.FakeAsyncRedis())
    yield c
    await c.aclose()


def slot(client: aioredis.Redis, thread: str, uid: str, ttl: float = 5) -> threads.ThreadSlot:
    return threads.ThreadSlot(client, thread, uid=uid, namespace="ns", name=f"run-{uid}", ttl_seconds=ttl)


async def test_one_run_holds_a_thread_and_waiters_take_it_in_queued_order(client: aioredis.Redis) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    first, second, third = (slot(client, thread, f"u{i}-{uuid.uuid4().hex[:6]}") for i in range(3))
    # Given a run holding the thread
    assert await first.take(1.0) is None
    # When two more arrive, the later-queued one first, and wait
    assert (await threads.admit(third, client, strategy="enqueue", queued_at="2025-01-01T00:00:03Z",
                                poll_seconds=1)).verdict is threads.Verdict.WAIT
    busy = await threads.admit(second, client, strategy="enqueue", queued_at="2025-01-01T00:00:02Z",
                               poll_seconds=1)
    assert busy.verdict is threads.Verdict.WAIT and busy.busy_with is not None
    assert busy.busy_with.startswith("ns/run-u0") and busy.first_wait
    # Then once the holder releases, the earlier-queued waiter is next, not the later one
    await first.release()
    assert await third.take(threads.order_of("2025-01-01T00:00:03Z")) == f"{second.uid} ns/run-{second.uid}"
    assert await second.take(threads.order_of("2025-01-01T00:00:02Z")) is None
    assert await second.renew()
    await second.release()
    assert await third.take(threads.order_of("2025-01-01T00:00:03Z")) is None
    await third.release()
    assert await client.exists(keys.thread_owner(thread)) == 0


async def test_reject_names_the_busy_run_and_a_duplicate_waiter_is_dropped(client: aioredis.Redis) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    holder, other = slot(client, thread, "holder"), slot(client, thread, f"o-{uuid.uuid4().hex[:6]}")
    assert await holder.take(0.0) is None
    rejected = await threads.admit(other, client, strategy="reject", queued_at=None, poll_seconds=1)
    assert (rejected.verdict, rejected.busy_with) == (threads.Verdict.REJECT, "ns/run-holder (holder)")
    # Two copies of one waiting run's message: the second within half a poll is a duplicate
    assert (await threads.admit(other, client, strategy="enqueue", queued_at=None,
                                poll_seconds=5)).verdict is threads.Verdict.WAIT
    assert (await threads.admit(other, client, strategy="enqueue", queued_at=None,
                                poll_seconds=5)).verdict is threads.Verdict.DUPLICATE
    await holder.release()


async def test_a_waiter_that_stopped_polling_leaves_the_line(client: aioredis.Redis) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    holder = slot(client, thread, f"h-{uuid.uuid4().hex[:6]}")
    gone = slot(client, thread, f"g-{uuid.uuid4().hex[:6]}")
    late = slot(client, thread, f"l-{uuid.uuid4().hex[:6]}")
    assert await holder.take(0.0) is None
    assert await gone.wait(1.0, poll_seconds=1) is True  # queued first, then never polls again
    await holder.release()
    assert await late.take(2.0) == f"{gone.uid} ns/run-{gone.uid}"
    await client.delete(keys.waiting(gone.uid))  # its mark expires
    assert await late.take(2.0) is None
    await late.release()


async def test_the_owner_key_expires_when_its_run_stops_renewing(client: aioredis.Redis) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    dead, alive = slot(client, thread, "dead", ttl=0.2), slot(client, thread, "alive")
    assert await dead.take(0.0) is None
    await asyncio.sleep(0.4)
    assert not await dead.renew()
    assert await alive.take(1.0) is None
    await dead.release()  # never deletes another run's claim
    assert await client.get(keys.thread_owner(thread)) == b"alive ns/run-alive"
    await alive.release()


async def test_a_run_that_owns_its_thread_keeps_it_on_its_next_delivery(client: aioredis.Redis) -> None:
    thread = f"t-{uuid.uuid4().hex}"
    owner, early = slot(client, thread, f"o-{uuid.uuid4().hex[:6]}"), slot(client, thread, f"e-{uuid.uuid4().hex[:6]}")
    assert await owner.take(5.0) is None
    assert await early.wait(1.0, poll_seconds=5) is True  # queued before the owner, waiting in line
    # When the owner's message is delivered again (a hand-back), it takes its own thread at once
    again = slot(client, thread, owner.uid)
    assert await again.take(5.0) is None
    await again.release()
    assert await early.take(1.0) is None
    await early.release()
