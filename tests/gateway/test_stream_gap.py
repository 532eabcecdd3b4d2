"""SSE resume across a trimmed stream: the gap is announced, never silent.

The run's stream is written by the real :class:`agentrun.streams.StreamWriter` with a small
``MAXLEN ~``, so real Redis drops its oldest entries (whole nodes of 100 at a time) as it
would for a long run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentrun import keys, streams
from tests.gateway.conftest import Bed, Event, sse_items

DONE = {"type": streams.STATUS, "status": "succeeded", "reason": "Completed"}


def _deltas(n: int) -> list[dict[str, Any]]:
    return [{"type": streams.ASSISTANT, "delta": f"tok{i} ", "iteration": 1} for i in range(n)]


async def _trimmed_run(gateway: Bed, redis: Any, ns: str, name: str, *, end: bool) -> tuple[str, str, int]:
    """A run whose first entries were trimmed: (its uid, the id of its first entry ever, entries written)."""
    run = gateway.create_run(ns, name, status={"phase": "Running", "attempt": 1})
    uid = str(run["metadata"]["uid"])
    writer = streams.StreamWriter(redis, uid, maxlen=10)
    writer.emit({"type": streams.STATUS, "status": "running", "attempt": 1})
    await writer.flush()
    assert writer.last_id is not None
    first_ever = writer.last_id
    events = [*_deltas(250), *([DONE] if end else [])]
    for event in events:
        writer.emit(event)
    await writer.flush()
    stored = await streams.read_all(redis, uid)
    assert len(stored) < 1 + len(events) and stored[0][0] != first_ever, "MAXLEN ~ trimmed nothing"
    return uid, first_ever, 1 + len(events)


async def _events(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Event]:
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        return [item async for item in sse_items(response) if isinstance(item, Event)]


async def test_resuming_from_a_trimmed_id_announces_the_gap_then_continues(gateway: Bed, redis: Any) -> None:
    # Given a run whose entries up to and after the client's Last-Event-ID were trimmed
    ns = gateway.namespace()
    uid, first_ever, written = await _trimmed_run(gateway, redis, ns, "trimmed", end=True)
    stored = await streams.read_all(redis, uid)
    # When the client resumes from that id
    async with gateway.client() as client:
        received = await _events(client, f"/v1/namespaces/{ns}/runs/trimmed/stream",
                                 {**gateway.keys.auth([ns]), "Last-Event-ID": first_ever})
    # Then it is told first, with where the stream continues and how much it may have missed
    gap = received[0]
    assert gap.event == "gap" and gap.id is None  # not an entry: Last-Event-ID stays the client's
    assert gap.data["after"] == first_ever and gap.data["firstId"] == stored[0][0]
    assert gap.data["missedAtMost"] == written - len(stored)
    # and then gets every entry still stored, once, in order, up to the terminal event
    assert [e.id for e in received[1:]] == [i for i, _ in stored]
    assert received[-1].data == DONE


async def test_a_reader_from_the_start_of_a_trimmed_stream_learns_exactly_how_many_it_missed(
    gateway: Bed, redis: Any
) -> None:
    ns = gateway.namespace()
    uid, _, written = await _trimmed_run(gateway, redis, ns, "late", end=True)
    stored = await streams.read_all(redis, uid)
    async with gateway.client() as client:
        received = await _events(client, f"/v1/namespaces/{ns}/runs/late/stream", gateway.keys.auth([ns]))
    assert received[0].event == "gap"
    assert received[0].data["after"] == streams.START and received[0].data["missed"] == written - len(stored)
    assert [e.id for e in received[1:]] == [i for i, _ in stored]


async def test_resuming_from_an_id_still_stored_has_no_gap(gateway: Bed, redis: Any) -> None:
    # Given a trimmed run, still going; the client's last id is among the entries kept
    ns = gateway.namespace()
    uid, _, _ = await _trimmed_run(gateway, redis, ns, "kept", end=False)
    stored = await streams.read_all(redis, uid)
    writer = streams.StreamWriter(redis, uid, maxlen=10)
    async with gateway.client() as client:
        headers = {**gateway.keys.auth([ns]), "Last-Event-ID": stored[5][0]}
        async with client.stream("GET", f"/v1/namespaces/{ns}/runs/kept/stream", headers=headers) as response:
            items = sse_items(response)
            first = await _next_event(items)  # replayed: the client is connected
            writer.emit(DONE)
            await writer.flush()
            rest = [item async for item in items if isinstance(item, Event)]
    # Then no gap event: the entries after it, then what came live, then the end
    received = [first, *rest]
    assert "gap" not in [e.event for e in received]
    assert [e.id for e in received][: len(stored) - 6] == [i for i, _ in stored[6:]]
    assert received[-1].data == DONE
    assert await redis.exists(keys.stream(uid))


async def _next_event(items: AsyncIterator[Event | str]) -> Event:
    async for item in items:
        if isinstance(item, Event):
            return item
    raise AssertionError("the stream ended")

