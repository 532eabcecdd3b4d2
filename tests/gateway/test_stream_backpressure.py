"""SSE to a client that stops reading: the gateway's writes wait (back-pressure), nothing is lost.

Live frames are written to an idle client's connection from the shared reader's task; when
the connection cannot take more, the rest of that write is handed to the client's own task
(:class:`agentrun_gateway.fanout.Outbox`). This covers that path with real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agentrun import streams
from tests.gateway.conftest import Bed, Event, sse_items

DONE = {"type": streams.STATUS, "status": "succeeded", "reason": "Completed"}


async def _next_event(items: AsyncIterator[Event | str]) -> Event:
    async for item in items:
        if isinstance(item, Event):
            return item
    raise AssertionError("the stream ended")


async def test_a_client_that_stops_reading_gets_everything_once_when_it_reads_again(
    gateway: Bed, redis: Any
) -> None:
    # Given a client connected to a live run that then stops reading: the run writes far more
    # than the socket buffers hold, so the gateway's writes to it have to wait (back-pressure)
    ns = gateway.namespace()
    run = gateway.create_run(ns, "stalled", status={"phase": "Running", "attempt": 1})
    uid = str(run["metadata"]["uid"])
    writer = streams.StreamWriter(redis, uid)
    writer.emit({"type": streams.STATUS, "status": "running", "attempt": 1})
    await writer.flush()
    big = "x" * 64_000
    async with gateway.client() as client, client.stream(
        "GET", f"/v1/namespaces/{ns}/runs/stalled/stream", headers=gateway.keys.auth([ns])
    ) as response:
        items = sse_items(response)
        first = await _next_event(items)
        for i in range(300):  # ≈ 19 MB
            writer.emit({"type": streams.ASSISTANT, "delta": f"{i}:{big}", "iteration": 1})
        writer.emit(DONE)
        await writer.flush()
        await asyncio.sleep(1)  # the gateway fills the socket and waits
        # When it reads again
        rest = [item async for item in items if isinstance(item, Event)]
    # Then it gets every entry, once, in order, and the end
    stored = [i for i, _ in await streams.read_all(redis, uid)]
    assert [e.id for e in [first, *rest]] == stored
    assert rest[-1].data == DONE
