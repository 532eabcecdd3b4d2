"""The stream protocol on a real Redis: order, no gap or duplicate on resume, bounded length."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agentrun import control, keys, streams


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


async def test_writer_keeps_order_and_reader_stops_at_the_terminal_event(client: aioredis.Redis) -> None:
    # Given a run that emits 500 chunks in a burst and then a terminal status
    uid = str(uuid.uuid4())
    writer = streams.StreamWriter(client, uid, batch_max=64)
    for i in range(500):
        writer.emit({"type": streams.ASSISTANT, "delta": str(i)})
    writer.emit({"type": streams.STATUS, "status": "succeeded"})
    writer.emit({"type": streams.ASSISTANT, "delta": "after the end"})
    await writer.flush()
    # When a reader follows it from the start
    seen = [event async for _, event in streams.follow(client, uid)]
    # Then it sees every chunk in order and nothing past the terminal event
    assert [e["delta"] for e in seen[:-1]] == [str(i) for i in range(500)]
    assert streams.is_terminal(seen[-1])
    await client.delete(keys.stream(uid))


async def test_a_live_reader_misses_nothing_between_backlog_and_new_events(client: aioredis.Redis) -> None:
    # Given a stream with a backlog and a reader that starts while the writer keeps going
    uid = str(uuid.uuid4())
    writer = streams.StreamWriter(client, uid)
    for i in range(100):
        writer.emit({"type": streams.ASSISTANT, "delta": str(i)})
    await writer.flush()

    async def read() -> list[str]:
        return [e.get("delta", "") async for _, e in streams.follow(client, uid, block_ms=200)]

    reader = asyncio.create_task(read())
    for i in range(100, 300):
        writer.emit({"type": streams.ASSISTANT, "delta": str(i)})
        if i % 10 == 0:
            await asyncio.sleep(0.001)
    writer.emit({"type": streams.STATUS, "status": "failed"})
    await writer.flush()
    # Then the reader got every event exactly once, in order
    got = await asyncio.wait_for(reader, 10)
    assert got[:-1] == [str(i) for i in range(300)]
    await client.delete(keys.stream(uid))


async def test_resuming_from_an_id_continues_without_duplicates(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    writer = streams.StreamWriter(client, uid)
    for i in range(10):
        writer.emit({"type": streams.ASSISTANT, "delta": str(i)})
    writer.emit({"type": streams.STATUS, "status": "stopped"})
    await writer.flush()
    entries = await streams.read_all(client, uid)
    resume_after = entries[4][0]  # the client saw 0..4, then its connection broke
    rest = [e.get("delta") async for _, e in streams.follow(client, uid, last_id=resume_after)]
    assert rest[:-1] == [str(i) for i in range(5, 10)]
    await client.delete(keys.stream(uid))


async def test_stream_length_is_bounded(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    writer = streams.StreamWriter(client, uid, maxlen=100)
    for i in range(2000):
        writer.emit({"type": streams.ASSISTANT, "delta": str(i)})
    await writer.flush()
    length = await client.xlen(keys.stream(uid))
    assert 100 <= length < 400  # MAXLEN ~ trims whole macro nodes
    await client.delete(keys.stream(uid))


async def test_a_stop_request_is_durable_before_anyone_listens(client: aioredis.Redis) -> None:
    uid = str(uuid.uuid4())
    await control.request_stop(client, uid, ttl_seconds=60)
    assert await control.stop_requested(client, uid) == "StopRequested"
    assert 0 < await client.ttl(keys.stop(uid)) <= 60
    await client.delete(keys.stop(uid))
