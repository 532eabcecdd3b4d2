"""Server-Sent Events for a run: framing, resume, heartbeat and the database fallback.

:func:`run_events` is what ``GET /v1/namespaces/{ns}/runs/{name}/stream`` (in
:mod:`agentrun.gateway.app`) streams. Each stream entry becomes one SSE event whose ``id:``
is the Redis entry id, ``event:`` the event type and ``data:`` the event as one line of
JSON. Reading goes through :func:`agentrun.streams.follow` from the client's
``Last-Event-ID``, so replay and live reading are one cursor: no gap, no duplicate. The
terminal ``status`` event ends the response.

When the run's stream is gone (its keys expired after the run ended), the client gets an
``expired`` event and then the record from the database: a ``run`` event with the final
state, one ``message`` event per message of the run and a terminal ``status`` event. These
carry no ``id:`` (they are not stream entries), so a client's ``Last-Event-ID`` stays the
last stream entry it saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import structlog

from agentrun import keys, phases, store, streams
from agentrun.gateway import fanout

logger = structlog.get_logger(__name__)

PING = b": ping\n\n"
MAX_BATCH = 64
"""Most frames sent in one write when a client's queue has piled up."""
EXPIRED = "expired"
RUN = "run"
ERROR = "error"
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def frame(event_type: str, data: dict[str, Any], *, event_id: str | None = None) -> bytes:
    """One SSE event. ``data`` is compact JSON, which never contains a newline."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event_type}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str))
    return ("\n".join(lines) + "\n\n").encode()


def valid_last_event_id(value: str) -> bool:
    """Whether ``value`` is a Redis stream entry id (``<ms>-<seq>``)."""
    return bool(ENTRY_ID.match(value))


@dataclasses.dataclass
class Source:
    """What one stream needs: where to read and how to learn the run's current state."""

    redis: aioredis.Redis
    store: store.Store
    uid: str
    run_status: Callable[[], Awaitable[dict[str, Any] | None]]
    """The run resource's current ``status`` (``{}`` when it has none), or None when deleted."""
    block_ms: int = 5_000
    hub: fanout.Hub | None = None
    """The process's shared readers; None: this stream reads Redis on its own."""


def entry_frame(entry_id: str, event: dict[str, Any]) -> bytes:
    """The SSE frame of a stream entry."""
    return frame(str(event.get("type") or "event"), event, event_id=entry_id)


async def run_events(
    source: Source,
    *,
    last_id: str,
    heartbeat_seconds: float,
    buffer: int = 1024,
    on_event: Callable[[], None] = lambda: None,
) -> AsyncIterator[bytes]:
    """SSE frames of a run from ``last_id`` to its terminal event, with ``: ping`` when idle.

    A producer task reads the run and queues frames; this generator sends them. A timer task
    queues a ping comment whenever ``heartbeat_seconds`` passed since the last frame sent.
    Both tasks are cancelled when the client goes away.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=buffer)
    last_sent = loop.time()

    async def heartbeat() -> None:
        while True:
            delay = last_sent + heartbeat_seconds - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif queue.empty():  # data waiting is as good as a ping
                queue.put_nowait(PING)
                await asyncio.sleep(heartbeat_seconds)
            else:
                await asyncio.sleep(heartbeat_seconds)

    producer = loop.create_task(_produce(source, last_id, queue))
    timer = loop.create_task(heartbeat())
    try:
        done = False
        while not done:
            item = await queue.get()
            batch: list[bytes] = []
            # What piled up while the last write was in flight goes out as one write.
            while item is not None:
                batch.append(item)
                if item is not PING:
                    on_event()
                if queue.empty() or len(batch) >= MAX_BATCH:
                    break
                item = queue.get_nowait()
            done = item is None
            if batch:
                last_sent = loop.time()
                yield b"".join(batch)
    finally:
        for task in (timer, producer):
            task.cancel()
        await asyncio.gather(timer, producer, return_exceptions=True)


async def _produce(source: Source, last_id: str, queue: asyncio.Queue[bytes | None]) -> None:
    try:
        await _read(source, last_id, queue)
    except asyncio.CancelledError:
        raise  # the client went away: nobody waits for the end marker
    except Exception:
        logger.exception("gateway.stream_failed", run_id=source.uid)
        # Say so rather than end as if the run were over: the client reconnects with its
        # Last-Event-ID and loses nothing.
        await queue.put(frame(ERROR, {"type": ERROR, "message": "the gateway lost the stream; reconnect"}))
    await queue.put(None)


async def _read(source: Source, last_id: str, queue: asyncio.Queue[bytes | None]) -> None:
    """Queue the run's frames: the stream from ``last_id``, or the database when it expired."""
    key = keys.stream(source.uid)
    if not await source.redis.exists(key):
        status = await source.run_status()
        if status is None:
            return
        if phases.is_terminal(status.get("phase")):
            await _from_database(source, status, queue)
            return
    ended = False  # the run ended (or vanished) without a terminal event in its stream
    state: dict[str, Any] = {}

    async def still_going() -> bool:
        nonlocal ended
        status = await source.run_status()
        if status is None or phases.is_terminal(status.get("phase")):
            ended = True
            state["status"] = status
            return False
        return True

    cursor = last_id
    if source.hub is not None:
        cursor, finished = await _shared(source, last_id, queue, still_going)
        if finished:
            return
    async for entry_id, event in streams.follow(
        source.redis, source.uid, last_id=cursor, block_ms=source.block_ms, on_idle=still_going
    ):
        await queue.put(entry_frame(entry_id, event))
    if ended:
        final = state.get("status")
        if final is None:
            await queue.put(frame(streams.STATUS, {"type": streams.STATUS, "status": "deleted"}))
        elif not await source.redis.exists(key):
            await _from_database(source, final, queue)
        else:
            await queue.put(frame(streams.STATUS, _status_event(final, source="resource")))


async def _shared(source: Source, last_id: str, queue: asyncio.Queue[bytes | None],
                  on_idle: Callable[[], Awaitable[bool]]) -> tuple[str, bool]:
    """Send entries through the run's shared reader; (the last id sent, whether it was terminal).

    Returns early (not terminal) when the reader stops or this client lags: the caller then
    follows Redis on its own from the returned id.
    """
    assert source.hub is not None
    subscription = source.hub.subscribe(source.uid, last_id, on_idle, queue)
    try:
        if fanout.entry_key(subscription.start) > fanout.entry_key(last_id):
            entries: Any = await source.redis.xrange(keys.stream(source.uid), min=f"({last_id}",
                                                     max=subscription.start)
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                event = streams.decode(fields)
                await queue.put(entry_frame(entry_id, event))
                subscription.advance(entry_id)
                if streams.is_terminal(event):
                    return entry_id, True
        subscription.go_live()
        terminal = await subscription.stopped
        return subscription.cursor, terminal
    finally:
        source.hub.unsubscribe(source.uid, subscription)


async def _from_database(source: Source, status: dict[str, Any], queue: asyncio.Queue[bytes | None]) -> None:
    """The ``expired`` event, then the run's final state and messages from the database."""
    await queue.put(frame(EXPIRED, {
        "type": EXPIRED,
        "runId": source.uid,
        "message": "the run's stream has expired; its final state and messages come from the database",
    }))
    record = await source.store.get_run(source.uid)
    final, origin = dict(status), "resource"
    if record is not None:
        await queue.put(frame(RUN, {"type": RUN, **run_record(record)}))
        for message in await source.store.list_messages(record.thread_id):
            if message.run_id == source.uid:
                await queue.put(frame(streams.MESSAGE, {"type": streams.MESSAGE, **message_record(message)}))
        if phases.is_terminal(record.status):  # else the resource knows the end and the database lags
            final, origin = {"phase": record.status, "reason": record.reason, "message": record.error}, "database"
    await queue.put(frame(streams.STATUS, _status_event(final, source=origin)))


def _status_event(status: dict[str, Any], *, source: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": streams.STATUS, "status": str(status.get("phase") or "unknown").lower(),
                             "source": source}
    for field in ("reason", "message", "iterations"):
        if status.get(field) not in (None, ""):
            event[field] = status[field]
    return event


def run_record(record: store.RunRecord) -> dict[str, Any]:
    """A database run as JSON (camelCase, as the resource's status spells its fields)."""
    return {
        "id": record.id, "namespace": record.namespace, "name": record.name, "threadId": record.thread_id,
        "phase": record.status, "attempt": record.attempt, "reason": record.reason, "error": record.error,
        "result": record.result, "usage": record.usage,
        "createdAt": _iso(record.created_at), "queuedAt": _iso(record.queued_at),
        "startedAt": _iso(record.started_at), "finishedAt": _iso(record.finished_at),
    }


def message_record(message: store.MessageRecord) -> dict[str, Any]:
    return {"id": message.id, "threadId": message.thread_id, "runId": message.run_id, "role": message.role,
            "content": message.content, "seq": message.seq, "createdAt": _iso(message.created_at)}


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())
