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
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions
import structlog
import tenacity

from agentrun import keys

logger = structlog.get_logger(__name__)

_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, TimeoutError)
"""Errors that mean Redis was not reached (or its reply was lost): the write may be retried."""

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
STEP = "step"
"""A workflow step's boundary: ``{"step": name, "index", "run", "status": "started",
"prompt"}`` before the step's events, ``{..., "status": "completed"|"failed", "reason",
"output" | "message", "iterations", "usage"}`` after them. Every event a step's agent loop
emits in between carries ``"step": name`` too; events of plain agent runs have no ``step``."""

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "stopped"})


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") == STATUS and event.get("status") in TERMINAL_STATUSES


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fields[FIELD])
    return value


class Emitter(Protocol):
    """What the agent loop needs of a stream: to append one event (a StreamWriter, or a
    wrapper that adds fields, such as a workflow step's name)."""

    def emit(self, event: dict[str, Any]) -> None: ...


class StreamWriter:
    """Appends a run's events to its stream, in order, pipelining what piles up.

    ``emit`` returns at once; a single flusher sends everything buffered in one pipelined
    round trip, so a burst of model tokens costs one round trip instead of one per token,
    and a lone event goes out immediately. ``flush`` waits until all emitted events are in
    Redis. Order is kept because only one flush runs at a time.

    When Redis is out of reach (a restart, a failover, a dropped connection) the batch in
    flight is sent again with exponential backoff and jitter for up to ``retry_seconds``; it
    stays at the head of the buffer meanwhile, so what is emitted later goes out after it and
    the order holds. A batch of several events is one ``MULTI``/``EXEC`` (one key, so it works
    on Redis Cluster too): stored whole or not at all. When the reply of a try was lost, the
    stream's last entries are compared with the batch before sending it again, so a retry does
    not store it twice. Only then does a write error stick and re-raise.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        uid: str,
        *,
        maxlen: int = 10_000,
        batch_max: int = 64,
        retry_seconds: float = 20.0,
    ) -> None:
        """``retry_seconds``: how long a batch is retried while Redis is unreachable. 20 s, below
        the lease's 30 s TTL: a worker cut off from Redis longer than that loses its lease and
        must stop writing anyway."""
        self._client = client
        self._retry_seconds = retry_seconds
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
                ids = await self._send(batch)
                del self._buffer[: len(batch)]  # only once stored: a retry resends the same head
                last = ids[-1]
                self.last_id = last.decode() if isinstance(last, bytes) else str(last)
        except BaseException as exc:
            self._error = exc
            raise

    async def _send(self, batch: list[bytes]) -> list[Any]:
        """XADD every event of ``batch``, retried while Redis is unreachable; their entry ids."""
        unsure = False

        async def attempt() -> list[Any]:
            nonlocal unsure
            if unsure:
                stored = await self._stored(batch)
                if stored is not None:
                    return stored
            unsure = True  # from here on a failure may have happened after Redis stored the batch
            ids: list[Any]
            if len(batch) == 1:
                ids = [await self._client.xadd(self._key, {FIELD: batch[0]}, maxlen=self._maxlen, approximate=True)]
            else:
                pipe = self._client.pipeline(transaction=True)
                for data in batch:
                    pipe.xadd(self._key, {FIELD: data}, maxlen=self._maxlen, approximate=True)
                ids = await pipe.execute()
            return ids

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_UNREACHABLE),
            stop=tenacity.stop_before_delay(self._retry_seconds),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
            before_sleep=lambda state: logger.warning(
                "stream.write_retry", key=self._key, attempt=state.attempt_number,
                error=str(state.outcome.exception() if state.outcome else None),
            ),
            reraise=True,
        )
        result: list[Any] = await retrying(attempt)
        return result

    async def _stored(self, batch: list[bytes]) -> list[Any] | None:
        """The ids of ``batch`` if it is already the tail of the stream (after the last entry
        this writer knows), else None."""
        entries: Any = await self._client.xrevrange(self._key, count=len(batch))
        tail = list(reversed(entries))
        if len(tail) != len(batch) or [fields.get(FIELD) for _, fields in tail] != batch:
            return None
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i, _ in tail]
        if self.last_id is not None and _entry_order(ids[0]) <= _entry_order(self.last_id):
            return None
        return ids

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


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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
