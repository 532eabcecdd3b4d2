"""One Redis reader per run per gateway process, shared by every SSE client of that run.

Created once per app by :func:`agentrun_gateway.app.create_app`; used by
:mod:`agentrun_gateway.sse`. Without it every connected client holds its own ``XREAD BLOCK``
(one Redis connection each) and decodes every event itself: a thousand clients on one run
cost a thousand connections and a thousand reads per token. With it the run's stream is read
once, each event is decoded and framed once, and the frame is handed to every subscriber.

Resume stays exact. A subscriber registers with the run's reader and learns the reader's
cursor at that instant (nothing is awaited in between): entries up to that cursor are
replayed by the subscriber from Redis (``XRANGE`` after its ``Last-Event-ID``), entries after
it come from the reader. Duplicates are dropped by id. A subscriber that falls behind by more
than its queue holds, or whose reader stops without a terminal event, is told so and
continues on its own :func:`agentrun.streams.follow` from the last id it sent.

The reader reads ``XREAD`` batches and hands each subscriber a whole batch, its frames joined
once, as one chunk: a gateway that fell behind during a burst catches up in one write per
client instead of one per entry. The chunk goes to the subscriber's :class:`Outbox`, which
writes it at once from the reader's task when the client's connection is idle (see
:class:`Outbox`), else keeps it for the client's own writer. At a thousand clients per event
this per-client path is what the gateway spends its CPU on (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
import structlog

from agentrun import keys, streams
from agentrun_gateway import chunks

logger = structlog.get_logger(__name__)


class Full(Exception):
    """The outbox holds as many frames as it may: the client reads slower than the run writes."""


class Outbox:
    """The frames waiting for one client's connection: many producers, one writer.

    ``put_nowait`` (the shared reader) and ``put`` (a client's own replay, which may wait for
    room) append; :meth:`take` gives the writer everything pending as one chunk. ``close``
    marks the end: ``take`` returns None once the rest is taken. ``abort`` drops what is
    pending (the client went away).

    ``direct``, when set, writes a frame at once from the producer's task: it is used when the
    writer is idle and nothing is pending, which is the common case of a live stream, and
    saves waking the writer's task for every frame of every client. It returns None when the
    write completed, or a coroutine that finishes it (the connection is applying back-pressure),
    which the writer then awaits before anything else; if it raises, the connection is aborted.
    """

    __slots__ = ("_events", "_frames", "_handed", "_limit", "_room", "_waiter", "closed", "direct")

    def __init__(self, limit: int) -> None:
        self._frames: list[bytes] = []
        self._events = 0
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._handed: Coroutine[Any, Any, None] | None = None
        self.closed = False
        self.direct: Callable[[bytes, int, bytes | None], Coroutine[Any, Any, None] | None] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def put_nowait(self, frame: bytes, *, events: int = 1, chunk: bytes | None = None) -> None:
        """Send or append ``frame`` holding ``events`` run events (0: a heartbeat); :class:`Full` when full.

        ``chunk``: ``frame`` already framed as an HTTP/1.1 chunk (:func:`chunks.frame`), shared by
        the clients of a run, for a direct write.
        """
        if len(self._frames) >= self._limit:
            raise Full
        waiter = self._waiter
        if waiter is not None and self.direct is not None and not self.closed:
            self._waiter = None  # the writer is idle: nothing pending, nothing being written
            try:
                rest = self.direct(frame, events, chunk)
            except Exception:
                self._waiter = waiter
                self.abort()
                return
            if rest is None:
                self._waiter = waiter
            else:
                self._handed = rest
                if not waiter.done():
                    waiter.set_result(None)
            return
        self._frames.append(frame)
        self._events += events
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def put(self, frame: bytes) -> None:
        """Append ``frame``, first waiting until the writer has taken what is pending if full."""
        while len(self._frames) >= self._limit and not self.closed:
            self._room = asyncio.get_running_loop().create_future()
            await self._room
        self.put_nowait(frame)

    def close(self) -> None:
        """No more frames: the writer ends after sending what is pending."""
        self.closed = True
        self._wake()

    def abort(self) -> None:
        """The connection is gone: drop what is pending and end the writer now."""
        self._frames.clear()
        if self._handed is not None:
            self._handed.close()
            self._handed = None
        self.close()

    async def take(self) -> tuple[bytes, int] | None:
        """Everything pending as one chunk, and how many run events it holds; None at the end."""
        while True:
            if self._handed is not None:
                rest, self._handed = self._handed, None
                await rest  # a direct write that had to wait: it goes out before anything else
            if self._frames:
                break
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        frames, events = self._frames, self._events
        self._frames, self._events = [], 0
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)
        return (frames[0] if len(frames) == 1 else b"".join(frames)), events

    def _wake(self) -> None:
        for future in (self._waiter, self._room):
            if future is not None and not future.done():
                future.set_result(None)
        self._waiter = self._room = None


@dataclasses.dataclass(frozen=True)
class Item:
    """A stream entry as delivered: its id (and its sort key), the event and its SSE frame."""

    id: str
    key: tuple[int, int]
    event: dict[str, Any]
    frame: bytes
    terminal: bool


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair (``"1700000000000-3"`` → ``(1700000000000, 3)``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One client's place at a run's shared reader.

    It starts buffering what the reader delivers while the client replays older entries from
    Redis; :meth:`go_live` then sends the buffer and from there on the reader puts frames
    straight into the client's queue (one hop, no task switch per client). ``stopped``
    resolves when the reader will put no more: True after the terminal event, False when the
    reader stopped early or the client fell behind (its queue was full).
    """

    def __init__(self, start: str, out: Outbox, cursor: str, *, buffer_max: int) -> None:
        self.start = start
        """The reader's position when this subscription began: replay up to it from Redis."""
        self.out = out
        self.cursor = cursor
        """The last entry id put into ``out``."""
        self._cursor_key = entry_key(cursor)
        self._buffer: list[Item] | None = []
        self._buffer_max = buffer_max
        self.stopped: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def advance(self, entry_id: str) -> None:
        """Record that the client sent ``entry_id`` itself (during the replay)."""
        self.cursor, self._cursor_key = entry_id, entry_key(entry_id)

    def offer(self, items: list[Item], joined: bytes, chunk: bytes) -> bool:
        """Take a batch of entries (``joined``: their frames; ``chunk``: those as an HTTP chunk)
        from the reader; False once this subscription wants no more."""
        if self.stopped.done():
            return False
        if self._buffer is not None:
            self._buffer.extend(items)
            if len(self._buffer) > self._buffer_max:
                self._stop(False)
                return False
            return True
        return self._deliver(items, joined, chunk)

    def go_live(self) -> None:
        """The replay is done: send what was buffered, then take entries as they come."""
        buffered, self._buffer = self._buffer or [], None
        if buffered:
            self._deliver(buffered, None, None)

    def end(self) -> None:
        self._stop(False)

    def _deliver(self, items: list[Item], joined: bytes | None, chunk: bytes | None) -> bool:
        """Put the entries this client has not sent yet into its outbox, as one chunk."""
        if items[-1].key <= self._cursor_key:
            return True  # all already sent by the replay
        if items[0].key > self._cursor_key:
            fresh = items
        else:
            fresh, joined, chunk = [item for item in items if item.key > self._cursor_key], None, None
        if joined is None:
            joined = fresh[0].frame if len(fresh) == 1 else b"".join(item.frame for item in fresh)
        try:
            self.out.put_nowait(joined, events=len(fresh), chunk=chunk)
        except Full:
            self._stop(False)
            return False
        last = fresh[-1]
        self.cursor, self._cursor_key = last.id, last.key
        if last.terminal:
            self._stop(True)
            return False
        return True

    def _stop(self, terminal: bool) -> None:
        if not self.stopped.done():
            self.stopped.set_result(terminal)


@dataclasses.dataclass
class _Reader:
    cursor: str
    on_idle: Callable[[], Awaitable[bool]]
    subscribers: set[Subscription] = dataclasses.field(default_factory=set)
    task: asyncio.Task[None] | None = None


class Hub:
    """The shared readers of one gateway process, one per run being watched."""

    def __init__(self, redis: aioredis.Redis, *, encode: Callable[[str, dict[str, Any]], bytes],
                 block_ms: int = 5_000, queue_size: int = 4096) -> None:
        self._redis = redis
        self._encode = encode
        self._block_ms = block_ms
        self._queue_size = queue_size
        self._readers: dict[str, _Reader] = {}

    def subscribe(self, uid: str, last_id: str, on_idle: Callable[[], Awaitable[bool]],
                  out: Outbox) -> Subscription:
        """Join the run's reader (starting it at ``last_id`` if there is none); frames go to ``out``."""
        reader = self._readers.get(uid)
        if reader is None:
            reader = _Reader(cursor=last_id, on_idle=on_idle)
            self._readers[uid] = reader
            reader.task = asyncio.get_running_loop().create_task(self._read(uid, reader))
        subscription = Subscription(reader.cursor, out, last_id, buffer_max=self._queue_size)
        reader.subscribers.add(subscription)
        return subscription

    def unsubscribe(self, uid: str, subscription: Subscription) -> None:
        reader = self._readers.get(uid)
        if reader is not None:
            reader.subscribers.discard(subscription)

    async def close(self) -> None:
        tasks = [r.task for r in self._readers.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, uid: str, reader: _Reader) -> None:
        async def still_wanted() -> bool:
            return bool(reader.subscribers) and await reader.on_idle()

        key = keys.stream(uid)
        try:
            while True:
                # streams.follow's loop, by batch: what one XREAD returns goes to each client as
                # one chunk (one write), so a gateway that fell behind catches up in fewer writes
                response: Any = await self._redis.xread({key: reader.cursor}, count=500, block=self._block_ms)
                if not response:
                    if not await still_wanted():
                        break
                    continue
                items: list[Item] = []
                for _stream, entries in response:
                    for raw_id, fields in entries:
                        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                        event = streams.decode(fields)
                        items.append(Item(entry_id, entry_key(entry_id), event, self._encode(entry_id, event),
                                          streams.is_terminal(event)))
                        if items[-1].terminal:
                            break
                if not items:
                    continue
                # No await from here to the end of the batch: a client that subscribes sees
                # the cursor of a batch every subscriber already has.
                reader.cursor = items[-1].id
                joined = items[0].frame if len(items) == 1 else b"".join(item.frame for item in items)
                chunk = chunks.frame(joined)  # framed once, written as is to every client
                for subscription in list(reader.subscribers):
                    if not subscription.offer(items, joined, chunk):
                        reader.subscribers.discard(subscription)
                if not reader.subscribers or items[-1].terminal:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("gateway.reader_failed", run_id=uid, exc_info=True)
        finally:
            if self._readers.get(uid) is reader:
                del self._readers[uid]
            for subscription in reader.subscribers:
                subscription.end()
