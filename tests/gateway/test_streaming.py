"""SSE from the gateway: framing, history, live delivery, resume, heartbeat, expiry.

Events are written with the real :class:`agentrun.streams.StreamWriter` into real Redis; the
run resources live in the API emulator; the gateway is a real uvicorn server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentrun import keys, store, streams
from tests.gateway.conftest import Bed, Event, sse_items


def _uid(run: dict[str, Any]) -> str:
    return str(run["metadata"]["uid"])


async def _write(redis: Any, uid: str, events: list[dict[str, Any]]) -> streams.StreamWriter:
    writer = streams.StreamWriter(redis, uid)
    for event in events:
        writer.emit(event)
    await writer.flush()
    return writer


async def _events(response: httpx.Response, limit: int | None = None) -> list[Event]:
    """Events (not comments) until the response ends, or the first ``limit`` of them."""
    found: list[Event] = []
    async for item in sse_items(response):
        if isinstance(item, Event):
            found.append(item)
            if limit is not None and len(found) == limit:
                break
    return found


async def _next_event(items: AsyncIterator[Event | str]) -> Event:
    async for item in items:
        if isinstance(item, Event):
            return item
    raise AssertionError("the stream ended")


def _deltas(n: int) -> list[dict[str, Any]]:
    return [{"type": streams.ASSISTANT, "delta": f"tok{i} ", "iteration": 1} for i in range(n)]


DONE = {"type": streams.STATUS, "status": "succeeded", "reason": "Completed"}


async def test_a_late_reader_gets_the_whole_history_framed_with_ids_and_types(gateway: Bed, redis: Any) -> None:
    # Given a run whose stream is complete
    ns = gateway.namespace()
    run = gateway.create_run(ns, "done", status={"phase": "Running", "attempt": 1})
    sent = [{"type": streams.STATUS, "status": "running", "attempt": 1}, *_deltas(3), DONE]
    await _write(redis, _uid(run), sent)
    stored = await streams.read_all(redis, _uid(run))
    # When a reader arrives afterwards
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/done/stream", headers=gateway.keys.auth([ns])
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = await _events(response)  # returns only because the server closed the stream
    # Then it gets every entry: id = the stream entry id, event = the type, data = the JSON
    assert [(e.id, e.event, e.data) for e in received] == [(i, ev["type"], ev) for i, ev in stored]
    assert received[-1].data == DONE


async def test_live_events_arrive_and_the_terminal_event_closes_the_stream(gateway: Bed, redis: Any) -> None:
    ns = gateway.namespace()
    run = gateway.create_run(ns, "live", status={"phase": "Running", "attempt": 1})
    writer = streams.StreamWriter(redis, _uid(run))
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/live/stream", headers=gateway.keys.auth([ns])
    ) as response:
        items = sse_items(response)
        # Given a connected reader (the first heartbeat proves the server is reading)
        assert isinstance(await anext(items), str)
        # When the worker emits, one event at a time
        for i, event in enumerate(_deltas(3)):
            writer.emit(event)
            await writer.flush()
            got = await _next_event(items)
            # Then each arrives as it is written
            assert got.data == event and got.id == writer.last_id, i
        writer.emit(DONE)
        await writer.flush()
        rest = [it async for it in items if isinstance(it, Event)]
    assert [e.data for e in rest] == [DONE]


async def test_last_event_id_resumes_without_gap_or_duplicate(gateway: Bed, redis: Any) -> None:
    ns = gateway.namespace()
    run = gateway.create_run(ns, "resume", status={"phase": "Running", "attempt": 1})
    writer = await _write(redis, _uid(run), _deltas(5))
    url = f"/v1/namespaces/{ns}/runs/resume/stream"
    async with gateway.client() as client:
        # Given a reader that saw three events and lost its connection
        async with client.stream("GET", url, headers=gateway.keys.auth([ns])) as response:
            first = await _events(response, limit=3)
        # While it was away the run went on and ended
        writer.emit({"type": streams.ASSISTANT, "delta": "more", "iteration": 2})
        writer.emit(DONE)
        await writer.flush()
        # When it reconnects with Last-Event-ID
        headers = {**gateway.keys.auth([ns]), "Last-Event-ID": str(first[-1].id)}
        async with client.stream("GET", url, headers=headers) as response:
            second = await _events(response)
    # Then together the two connections saw every entry exactly once, in order
    stored = await streams.read_all(redis, _uid(run))
    assert [e.id for e in first + second] == [i for i, _ in stored]
    assert second[-1].data == DONE


async def test_a_heartbeat_comment_comes_while_the_run_is_silent(gateway: Bed, redis: Any) -> None:
    ns = gateway.namespace()
    run = gateway.create_run(ns, "quiet", status={"phase": "Running", "attempt": 1})
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/quiet/stream", headers=gateway.keys.auth([ns])
    ) as response:
        items = sse_items(response)
        # A run with no events yet: the connection is kept alive with ": ping" comments
        assert [await anext(items), await anext(items)] == [": ping", ": ping"]
        await _write(redis, _uid(run), [DONE])
        assert [it.data for it in [x async for x in items] if isinstance(it, Event)] == [DONE]


async def test_an_expired_stream_is_announced_then_served_from_the_database(
    gateway: Bed, redis: Any, db: store.Store
) -> None:
    # Given a run that ended long ago: its Redis keys are gone, the database has its record
    ns = gateway.namespace()
    run = gateway.create_run(ns, "old", status={"phase": "Succeeded", "attempt": 1, "reason": "Completed"})
    uid, thread = _uid(run), f"thread-{uuid.uuid4().hex[:8]}"
    await db.ensure_thread(thread, namespace=ns)
    await db.upsert_run(store.RunRecord(id=uid, namespace=ns, name="old", thread_id=thread, status="Queued"))
    await db.transition(uid, "Running", attempt=1)
    await db.add_message(thread, "user", "hi", run_id=uid)
    await db.add_message(thread, "assistant", "hello there", run_id=uid)
    await db.transition(uid, "Succeeded", attempt=1, reason="Completed", result="hello there")
    assert not await redis.exists(keys.stream(uid))
    # When a reader asks for its stream
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/old/stream", headers=gateway.keys.auth([ns])
    ) as response:
        received = await _events(response)
    # Then it is told the stream expired, and gets the final state and messages, then the end
    assert [e.event for e in received] == ["expired", "run", "message", "message", "status"]
    assert received[1].data["phase"] == "Succeeded" and received[1].data["result"] == "hello there"
    assert [(e.data["role"], e.data["content"]) for e in received[2:4]] == [("user", "hi"),
                                                                             ("assistant", "hello there")]
    assert received[-1].data == {"type": "status", "status": "succeeded", "reason": "Completed",
                                 "source": "database"}
    assert all(e.id is None for e in received)  # not stream entries: Last-Event-ID stays as it was


async def test_a_stream_that_expires_while_watched_falls_back_to_the_database(
    gateway: Bed, redis: Any, db: store.Store
) -> None:
    # Given a reader following a run whose stream disappears (TTL) before a terminal event
    ns = gateway.namespace()
    run = gateway.create_run(ns, "vanish", status={"phase": "Running", "attempt": 1})
    uid = _uid(run)
    await _write(redis, uid, _deltas(1))
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/vanish/stream", headers=gateway.keys.auth([ns])
    ) as response:
        items = sse_items(response)
        assert (await _next_event(items)).event == "assistant"
        # When the run ends and its stream is gone
        gateway.set_status(ns, "vanish", {"phase": "Failed", "reason": "ModelError", "message": "boom"})
        await redis.delete(keys.stream(uid))
        rest = [it async for it in items if isinstance(it, Event)]
    # Then the reader is told, and gets the end from the record (no database row: the resource)
    assert [e.event for e in rest] == ["expired", "status"]
    assert rest[-1].data == {"type": "status", "status": "failed", "reason": "ModelError", "message": "boom",
                             "source": "resource"}


async def test_metrics_count_connected_streams_and_events(gateway: Bed, redis: Any) -> None:
    ns = gateway.namespace()
    run = gateway.create_run(ns, "counted", status={"phase": "Running", "attempt": 1})

    async def scrape() -> dict[str, float]:
        async with gateway.client() as client:
            text = (await client.get("/metrics")).text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                if line.startswith("agentrun_gateway_") and " " in line}

    before = await scrape()
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/counted/stream", headers=gateway.keys.auth([ns])
    ) as response:
        items = sse_items(response)
        await anext(items)  # connected (a heartbeat came)
        during = await scrape()
        await _write(redis, _uid(run), [*_deltas(2), DONE])
        assert len([it async for it in items if isinstance(it, Event)]) == 3
    assert during["agentrun_gateway_streams"] >= 1
    after = await scrape()
    assert after["agentrun_gateway_events_sent_total"] - before["agentrun_gateway_events_sent_total"] >= 3
    await asyncio.sleep(0)


async def test_concurrent_readers_of_one_run_each_get_exactly_their_entries(gateway: Bed, redis: Any) -> None:
    # Given a run with history, and readers joining at different points while it streams a
    # burst far larger than a client's buffer (the gateway's shared reader hands entries to
    # all of them; those that overflow carry on reading Redis themselves)
    ns = gateway.namespace()
    run = gateway.create_run(ns, "crowd", status={"phase": "Running", "attempt": 1})
    writer = await _write(redis, _uid(run), _deltas(30))
    history = [i for i, _ in await streams.read_all(redis, _uid(run))]
    starts: list[str | None] = [None, None, history[9], history[19], history[29]]
    url = f"/v1/namespaces/{ns}/runs/crowd/stream"

    async def read(client: httpx.AsyncClient, last_id: str | None, connected: asyncio.Event) -> list[Event]:
        headers = {**gateway.keys.auth([ns]), **({"Last-Event-ID": last_id} if last_id else {})}
        async with client.stream("GET", url, headers=headers) as response:
            items = sse_items(response)
            first = await _next_event(items) if last_id != history[-1] else None
            connected.set()
            return ([first] if first else []) + [it async for it in items if isinstance(it, Event)]

    async with gateway.client() as client:
        flags = [asyncio.Event() for _ in starts]
        readers = [asyncio.create_task(read(client, start, flag)) for start, flag in zip(starts, flags, strict=True)]
        await asyncio.gather(*(f.wait() for f in flags[:-1]))
        # When the run bursts 300 more entries and ends (the last reader may still be joining)
        for event in _deltas(300):
            writer.emit(event)
        writer.emit(DONE)
        await writer.flush()
        results = await asyncio.gather(*readers)
    # Then every reader got every entry after its Last-Event-ID, once, in order
    stored = [i for i, _ in await streams.read_all(redis, _uid(run))]
    for start, received in zip(starts, results, strict=True):
        expected = stored if start is None else stored[stored.index(start) + 1:]
        assert [e.id for e in received] == expected, start
