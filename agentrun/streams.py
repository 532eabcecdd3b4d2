"""The stream protocol: every event a run emits, in a Redis Stream, readable live and later.

The worker writes with :class:`StreamWriter`; every reader (``agentrun logs``, the demo, the
gateway) reads with :func:`follow`. An event is one stream entry with a single field ``e``
holding JSON ``{"type": ..., ...}``; the entry id is the SSE event id. The last entry of a
run is a terminal ``status`` event (``succeeded``, ``failed`` or ``stopped``).

Why a stream and not the seed's list + pub/sub: a reader asks ``XREAD BLOCK`` for entries
after the last id it saw. Replay and live reading are the same call on the same cursor, so
there is no window between "read the backlog" and "subscribe" in which an event is lost, no
duplicate, and a client resumes with ``Last-Event-ID``. ``MAXLEN ~`` bounds memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from agentrun import keys

FIELD = b"e"
START = "0-0"

# Event types.
STATUS = "status"
"""``{"status": "running", "attempt", "receivedAt"}`` when a worker starts an attempt;
``{"status": "requeued", "reason": "WorkerShutdown", "attempt", "iterations"}`` (not
terminal) when a stopping worker hands the run back;
``{"status": "waiting", "reason": "ThreadBusy", "message"}`` (not terminal, before ``running``)
when the run waits for another run on its thread (``multitaskStrategy``);
``{"status": "succeeded"|"failed"|"stopped", "reason", "message", "iterations", "usage"}``
last of all."""
ASSISTANT = "assistant"
"""A chunk of assistant text: ``{"delta": str, "iteration": int}``."""
MESSAGE = "message"
"""A complete message added to the thread: ``{"role", "content", "iteration"}``."""
TOOL_CALL = "tool_call"
"""The model called a tool: ``{"id", "name", "arguments", "iteration"}``."""
TOOL_RESULT = "tool_result"
"""What the tool returned, or its error (which the model sees too): ``{"id", "name",
"content", "error", "iteration"}``."""
USAGE = "usage"

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "stopped"})


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") == STATUS and event.get("status") in TERMINAL_STATUSES


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fields[FIELD])
    return value


class StreamWriter:
    """Appends a run's events to its stream, in order, pipelining what piles up.

    ``emit`` returns at once; a single flusher sends everything buffered in one pipelined
    round trip, so a burst of model tokens costs one round trip instead of one per token,
    and a lone event goes out immediately. ``flush`` waits until all emitted events are in
    Redis. Order is kept because only one flush runs at a time.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        uid: str,
        *,
        maxlen: int = 10_000,
        batch_max: int = 64,
    ) -> None:
        self._client = client
        self._key = keys.stream(uid)
        self._maxlen = maxlen
        self._batch_max = batch_max
        self._buffer: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.last_id: str | None = None
        self.count = 0

    @property
    def key(self) -> str:
        return self._key

    def emit(self, event: dict[str, Any]) -> None:
        if self._error is not None:
            raise self._error
        self._buffer.append(encode(event))
        self.count += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            while self._buffer:
                batch = self._buffer[: self._batch_max]
                del self._buffer[: len(batch)]
                if len(batch) == 1:
                    entry_id = await self._client.xadd(
                        self._key, {FIELD: batch[0]}, maxlen=self._maxlen, approximate=True
                    )
                    ids = [entry_id]
                else:
                    pipe = self._client.pipeline(transaction=False)
                    for data in batch:
                        pipe.xadd(self._key, {FIELD: data}, maxlen=self._maxlen, approximate=True)
                    ids = await pipe.execute()
                last = ids[-1]
                self.last_id = last.decode() if isinstance(last, bytes) else str(last)
        except BaseException as exc:
            self._error = exc
            raise

    async def flush(self) -> None:
        """Wait until every emitted event is stored; re-raise a write error."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._error is not None:
            raise self._error
        if self._buffer:  # emitted while the last flusher was finishing
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            await self.flush()

    async def expire(self, ttl_seconds: int) -> None:
        await self._client.expire(self._key, ttl_seconds)


async def follow(
    client: aioredis.Redis,
    uid: str,
    *,
    last_id: str = START,
    block_ms: int = 5_000,
    count: int = 500,
    on_idle: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield ``(entry_id, event)`` after ``last_id`` until the terminal status event.

    Replays what is stored and then blocks on the same cursor for what comes next. When
    ``block_ms`` passes with nothing new, ``on_idle`` is awaited; if it returns False the
    iteration ends (e.g. the run is gone or ended without a terminal event).
    """
    key = keys.stream(uid)
    cursor = last_id
    while True:
        response: Any = await client.xread({key: cursor}, count=count, block=block_ms)
        if not response:
            if on_idle is not None and not await on_idle():
                return
            continue
        for _stream, entries in response:
            for raw_id, fields in entries:
                cursor = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                event = decode(fields)
                yield cursor, event
                if is_terminal(event):
                    return


async def read_all(client: aioredis.Redis, uid: str) -> list[tuple[str, dict[str, Any]]]:
    """Everything stored for a run right now, without blocking."""
    entries: Any = await client.xrange(keys.stream(uid))
    return [((i.decode() if isinstance(i, bytes) else str(i)), decode(f)) for i, f in entries]
