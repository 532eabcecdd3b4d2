"""Server-Sent Events for a run: framing, resume, heartbeat and the database fallback.

:class:`EventStream` is the response of ``GET /v1/namespaces/{ns}/runs/{name}/stream`` (in
:mod:`agentrun_gateway.app`). Each stream entry becomes one SSE event whose ``id:`` is the
Redis entry id, ``event:`` the event type and ``data:`` the event as one line of JSON. A
client replays from its ``Last-Event-ID`` and then takes the run's shared reader
(:mod:`agentrun_gateway.fanout`) from where the replay ended, or follows Redis on its own
(:func:`agentrun.streams.follow`): no gap, no duplicate. The terminal ``status`` event ends
the response. A ``Last-Event-ID`` older than what the capped stream still holds gets a
``gap`` event first (:mod:`agentrun_gateway.gap`).

When the run's stream is gone (its keys expired after the run ended), the client gets an
``expired`` event and then the record from the database: a ``run`` event with the final
state, one ``message`` event per message of the run and a terminal ``status`` event. These
carry no ``id:`` (they are not stream entries), so a client's ``Last-Event-ID`` stays the
last stream entry it saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, MutableMapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from starlette import responses

from agentrun import keys, phases, store, streams
from agentrun_gateway import chunks, fanout, gap

logger = structlog.get_logger(__name__)

PING = b": ping\n\n"
EXPIRED = "expired"
GAP = gap.GAP
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


class EventStream(responses.Response):
    """The SSE response of one client: frames of a run from ``last_id`` to its terminal event.

    A plain ASGI response rather than a ``StreamingResponse`` over an async generator: with a
    thousand clients on one run, every layer between "the shared reader has a frame" and "the
    socket write" is paid a thousand times per event. Here the reader's chunk goes to the
    client's :class:`~agentrun_gateway.fanout.Outbox`: when this response's task is idle the
    outbox writes it at once through ``send_now`` (the ASGI ``send`` driven from the reader's
    task; a write that has to wait is finished by this task), else this task sends whatever
    is pending as one ``http.response.body`` message.

    Besides that task, a client has a producer task (its replay from Redis, then waiting on
    the shared reader, or following Redis on its own) and a task waiting for the disconnect;
    both idle while the run streams. The heartbeat is a timer handle, not a task: when it
    fires and nothing was sent for ``heartbeat_seconds``, a ``: ping`` comment goes out.
    """

    media_type = "text/event-stream"

    def __init__(self, source: Source, *, last_id: str, heartbeat_seconds: float, buffer: int = 1024,
                 on_events: Callable[[int], object] = lambda n: None,
                 connected: Callable[[int], object] = lambda delta: None) -> None:
        # As StreamingResponse does: no body, so no Content-Length header.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"})
        self.source = source
        self.last_id = last_id
        self.heartbeat_seconds = heartbeat_seconds
        self.buffer = buffer
        self.on_events = on_events
        self.connected = connected

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        outbox = fanout.Outbox(self.buffer)
        last_sent = loop.time()
        heartbeat = self.heartbeat_seconds
        timer: asyncio.TimerHandle | None = None

        unreported = 0  # events written directly, not yet counted in the metric

        def send_now(data: bytes, events: int, chunk: bytes | None) -> Coroutine[Any, Any, None] | None:
            """Write from the producer's task; what remains if the write has to wait."""
            nonlocal last_sent, unreported
            if chunk is not None and write_chunk is not None and write_chunk(chunk):
                last_sent = loop.time()
                unreported += events
                return None
            started = send({"type": "http.response.body", "body": data, "more_body": True})
            coro = started if inspect.iscoroutine(started) else _awaited(started)
            try:
                blocker = coro.send(None)
            except StopIteration:
                last_sent = loop.time()
                unreported += events
                return None
            unreported += events
            return _resumed(coro, blocker)

        def report() -> None:
            nonlocal unreported
            if unreported:
                self.on_events(unreported)
                unreported = 0

        def tick() -> None:
            nonlocal timer
            report()
            due = last_sent + heartbeat - loop.time()
            if due <= 0.001:
                if not len(outbox) and not outbox.closed:  # data waiting is as good as a ping
                    outbox.put_nowait(PING, events=0)
                due = heartbeat
            timer = loop.call_later(due, tick)

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        write_chunk = chunks.writer(scope)
        outbox.direct = send_now
        self.connected(1)
        producer = loop.create_task(_produce(self.source, self.last_id, outbox))
        gone = loop.create_task(_disconnected(receive))
        gone.add_done_callback(lambda _: outbox.abort())
        timer = loop.call_later(heartbeat, tick)
        try:
            while (chunk := await outbox.take()) is not None:
                data, events = chunk
                await send({"type": "http.response.body", "body": data, "more_body": True})
                last_sent = loop.time()
                if events:
                    self.on_events(events)
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write (servers on ASGI spec 2.4 raise it)
        finally:
            outbox.direct = None
            if timer is not None:
                timer.cancel()
            report()
            self.connected(-1)
            for task in (gone, producer):
                task.cancel()
            await asyncio.gather(gone, producer, return_exceptions=True)


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, None], blocker: Any) -> Generator[Any, Any, None]:
    """The rest of ``coro``, which suspended on ``blocker`` in another task: awaiting this
    resumes it in the awaiting task, passing results and exceptions (cancellation) through."""
    while True:
        try:
            value = yield blocker
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as await would
            try:
                blocker = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            blocker = coro.send(value)
        except StopIteration:
            return


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _produce(source: Source, last_id: str, outbox: fanout.Outbox) -> None:
    try:
        await _read(source, last_id, outbox)
    except asyncio.CancelledError:
        raise  # the client went away: nobody waits for the end
    except Exception:
        logger.exception("gateway.stream_failed", run_id=source.uid)
        # Say so rather than end as if the run were over: the client reconnects with its
        # Last-Event-ID and loses nothing.
        await outbox.put(frame(ERROR, {"type": ERROR, "message": "the gateway lost the stream; reconnect"}))
    outbox.close()


async def _read(source: Source, last_id: str, outbox: fanout.Outbox) -> None:
    """Queue the run's frames: the stream from ``last_id``, or the database when it expired."""
    key = keys.stream(source.uid)
    if not await source.redis.exists(key):
        status = await source.run_status()
        if status is None:
            return
        if phases.is_terminal(status.get("phase")):
            await _from_database(source, status, outbox)
            return
    else:
        missing = await gap.check(source.redis, key, last_id)
        if missing is not None:
            await outbox.put(frame(GAP, {"type": GAP, **missing}))
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
        cursor, finished = await _shared(source, last_id, outbox, still_going)
        if finished:
            return
    async for entry_id, event in streams.follow(
        source.redis, source.uid, last_id=cursor, block_ms=source.block_ms, on_idle=still_going
    ):
        await outbox.put(entry_frame(entry_id, event))
    if ended:
        final = state.get("status")
        if final is None:
            await outbox.put(frame(streams.STATUS, {"type": streams.STATUS, "status": "deleted"}))
        elif not await source.redis.exists(key):
            await _from_database(source, final, outbox)
        else:
            await outbox.put(frame(streams.STATUS, _status_event(final, source="resource")))


async def _shared(source: Source, last_id: str, outbox: fanout.Outbox,
                  on_idle: Callable[[], Awaitable[bool]]) -> tuple[str, bool]:
    """Send entries through the run's shared reader; (the last id sent, whether it was terminal).

    Returns early (not terminal) when the reader stops or this client lags: the caller then
    follows Redis on its own from the returned id.
    """
    assert source.hub is not None
    subscription = source.hub.subscribe(source.uid, last_id, on_idle, outbox)
    try:
        if fanout.entry_key(subscription.start) > fanout.entry_key(last_id):
            entries: Any = await source.redis.xrange(keys.stream(source.uid), min=f"({last_id}",
                                                     max=subscription.start)
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                event = streams.decode(fields)
                await outbox.put(entry_frame(entry_id, event))
                subscription.advance(entry_id)
                if streams.is_terminal(event):
                    return entry_id, True
        subscription.go_live()
        terminal = await subscription.stopped
        return subscription.cursor, terminal
    finally:
        source.hub.unsubscribe(source.uid, subscription)


async def _from_database(source: Source, status: dict[str, Any], outbox: fanout.Outbox) -> None:
    """The ``expired`` event, then the run's final state and messages from the database."""
    await outbox.put(frame(EXPIRED, {
        "type": EXPIRED,
        "runId": source.uid,
        "message": "the run's stream has expired; its final state and messages come from the database",
    }))
    record = await source.store.get_run(source.uid)
    final, origin = dict(status), "resource"
    if record is not None:
        await outbox.put(frame(RUN, {"type": RUN, **run_record(record)}))
        for message in await source.store.list_messages(record.thread_id):
            if message.run_id == source.uid:
                await outbox.put(frame(streams.MESSAGE, {"type": streams.MESSAGE, **message_record(message)}))
        if phases.is_terminal(record.status):  # else the resource knows the end and the database lags
            final, origin = {"phase": record.status, "reason": record.reason, "message": record.error}, "database"
    await outbox.put(frame(streams.STATUS, _status_event(final, source=origin)))


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
