"""One run at a time on a conversation thread, and what a new run does when it is busy.

Called by ``execution`` at admission (after the run's lease is taken, before ``Running``),
from the lease keeper (renewal) and when the run ends (release). Two runs executing on one
thread at once would interleave their turns in the thread's messages and each would answer
a conversation the other is changing, so a thread has one owner: the key
``agentrun:thread:{<threadId>}:owner`` holds ``<uid> <namespace>/<name>`` of the run that
executes on it, with the lease's TTL, renewed with the lease and deleted after the run's
final state is written (so the next run reads the whole conversation). A worker that dies
stops renewing it, and it expires with the lease.

A run that finds the thread busy follows ``spec.multitaskStrategy``:

- ``enqueue`` (the default): wait in line, then run. The message is handed back to the
  queue with a delay (:attr:`WorkerSettings.thread_poll_seconds`): a waiting run holds no
  worker thread, only a delayed message. The line (``…:line``, a sorted set scored by
  ``queuedAt``) keeps the order: a free thread goes to the oldest run still waiting. A run
  that stopped polling (deleted, ended by its deadline) is dropped from the line when its
  ``agentrun:{uid}:waiting`` mark expires. The wait is bounded by ``timeoutSeconds``: the
  operator ends a run still ``Queued`` past it with ``DeadlineExceeded``.
- ``reject``: the run ends ``Failed``/``ThreadBusy`` with a message naming the busy run.
- ``interrupt``: the busy run is asked to stop (``agentrun.control.request_stop``, reason
  ``Interrupted``), and the new run waits as ``enqueue`` does until it has ended.

Why ``enqueue`` by default: the answer to ``ask`` is a new run on the same thread, and it may
be created while the asking run is still writing its final state; waiting loses nothing and
interrupts nothing. Every check is a WATCH/MULTI transaction on the thread's keys (one hash
slot), no Lua, so it works on Redis Cluster and on the embedded Redis of ``agentrun dev``.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from agentrun import control, keys, reasons, timestamps

logger = structlog.get_logger(__name__)

REJECT = "reject"
ENQUEUE = "enqueue"
INTERRUPT = "interrupt"
STRATEGIES = (REJECT, ENQUEUE, INTERRUPT)
DEFAULT = ENQUEUE

_ATTEMPTS = 8  # WATCH conflicts in a row before a check gives up and treats the thread as busy
LINE_TTL_SECONDS = 86_400


class Verdict(enum.Enum):
    RUN = "run"  # the thread is this run's: go on
    WAIT = "wait"  # hand the message back with a delay and try again
    REJECT = "reject"  # end the run Failed/ThreadBusy
    DUPLICATE = "duplicate"  # another copy of this run's message is already waiting: drop this one


@dataclasses.dataclass(frozen=True)
class Admission:
    verdict: Verdict
    busy_with: str | None = None
    """``<namespace>/<name> (<uid>)`` of the run in the way, for messages and logs."""
    first_wait: bool = False
    """This delivery starts the wait (no copy of the run polled before)."""


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def _uid(member: str) -> str:
    return member.split(" ", 1)[0]


def describe(member: str) -> str:
    """``ns/name (uid)`` for ``<uid> <ns>/<name>``."""
    uid, _, ref = member.partition(" ")
    return f"{ref} ({uid})" if ref else uid


def order_of(queued_at: str | None) -> float:
    """The line's score of a run: when it was queued (seconds since the epoch)."""
    stamp = timestamps.epoch(queued_at)
    return time.time() if stamp is None else stamp


class ThreadSlot:
    """The claim of one run on its thread."""

    def __init__(self, client: aioredis.Redis, thread_id: str, *, uid: str, namespace: str, name: str,
                 ttl_seconds: float) -> None:
        self._client = client
        self.thread_id = thread_id
        self._uid = uid
        self._label = f"{uid} {namespace}/{name}"
        self._owner_key = keys.thread_owner(thread_id)
        self._line_key = keys.thread_line(thread_id)
        self._ttl_ms = int(ttl_seconds * 1000)
        self.held = False

    @property
    def uid(self) -> str:
        return self._uid

    async def take(self, order: float) -> str | None:
        """Take the thread if no other run holds it or waits ahead of this one.

        None when taken; else the member (``<uid> <ns>/<name>``) in the way."""
        await self._prune()
        owner: str | None = None
        for _ in range(_ATTEMPTS):
            async with self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self._owner_key, self._line_key)
                    owner = _text(await pipe.get(self._owner_key))
                    if owner is not None and _uid(owner) != self._uid:
                        return owner
                    # A run that owns the thread already (its redelivery, its next attempt) keeps
                    # it; any other goes after the runs queued before it.
                    line: list[Any] = [] if owner is not None else await pipe.zrange(
                        self._line_key, 0, -1, withscores=True)
                    for raw, score in line:
                        member = _text(raw) or ""
                        if _uid(member) != self._uid and (float(score), member) < (order, self._label):
                            return member
                    pipe.multi()  # type: ignore[no-untyped-call,unused-ignore]
                    pipe.set(self._owner_key, self._label, px=self._ttl_ms)
                    pipe.zrem(self._line_key, self._label)
                    await pipe.execute()
                    self.held = True
                    return None
                except redis.exceptions.WatchError:
                    continue
        return owner or self._label

    async def _prune(self) -> None:
        """Drop from the line the runs that stopped waiting (their waiting mark expired)."""
        members = [_text(m) or "" for m in await self._client.zrange(self._line_key, 0, -1)]
        others = [m for m in members if _uid(m) != self._uid]
        if not others:
            return
        pipe = self._client.pipeline(transaction=False)
        for member in others:
            pipe.exists(keys.waiting(_uid(member)))
        alive = await pipe.execute()
        gone = [m for m, live in zip(others, alive, strict=True) if not live]
        if gone:
            await self._client.zrem(self._line_key, *gone)
            logger.info("thread.line_pruned", thread_id=self.thread_id, gone=gone)

    async def wait(self, order: float, poll_seconds: float) -> bool | None:
        """Join the line (or stay in it) and mark this run as waiting.

        None: a copy of this run's message polled less than half a poll ago (a duplicate
        delivery): this copy is dropped, so one copy per run keeps polling. True: the wait
        starts now; False: it goes on."""
        mark = keys.waiting(self._uid)
        now_ms = int(time.time() * 1000)
        poll_ms = int(poll_seconds * 1000)
        async with self._client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(mark)
                last = _text(await pipe.get(mark))
                if last is not None and now_ms - int(last) < poll_ms // 2:
                    return None
                pipe.multi()  # type: ignore[no-untyped-call,unused-ignore]
                # Alive for three polls: a late delayed message does not lose its place.
                pipe.set(mark, str(now_ms), px=3 * poll_ms + 5_000)
                await pipe.execute()
            except redis.exceptions.WatchError:
                return None
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(self._line_key, {self._label: order}, nx=True)
        pipe.expire(self._line_key, LINE_TTL_SECONDS)
        await pipe.execute()
        return last is None

    async def renew(self) -> bool:
        """Extend the claim with the lease; False when it is no longer this run's."""
        if not self.held:
            return False
        return await self._swap(self._label)

    async def release(self) -> None:
        """Give the thread up (if this run holds it) and clear the run's waiting mark."""
        if not self.held:
            return
        await self._swap(None)
        self.held = False
        await self._client.delete(keys.waiting(self._uid))

    async def _swap(self, value: str | None) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._owner_key)
                if _text(await pipe.get(self._owner_key)) != self._label:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call,unused-ignore]
                if value is None:
                    pipe.delete(self._owner_key)
                else:
                    pipe.set(self._owner_key, value, px=self._ttl_ms)
                await pipe.execute()
                return True
            except redis.exceptions.WatchError:
                return False


async def admit(slot: ThreadSlot, client: aioredis.Redis, *, strategy: str, queued_at: str | None,
                poll_seconds: float) -> Admission:
    """Decide what a run does about its thread (see the module docstring)."""
    order = order_of(queued_at)
    busy = await slot.take(order)
    if busy is None:
        return Admission(Verdict.RUN)
    log = logger.bind(thread_id=slot.thread_id, busy_with=busy, strategy=strategy)
    if strategy == REJECT:
        log.info("thread.rejected")
        return Admission(Verdict.REJECT, describe(busy))
    if strategy == INTERRUPT:
        owner = _text(await client.get(keys.thread_owner(slot.thread_id)))
        if owner is not None and _uid(owner) != slot.uid:
            await control.request_stop(client, _uid(owner), reason=reasons.Reason.INTERRUPTED)
            log.info("thread.interrupting", owner=owner)
    first = await slot.wait(order, poll_seconds)
    if first is None:
        log.info("thread.duplicate_waiter")
        return Admission(Verdict.DUPLICATE, describe(busy))
    if first:
        log.info("thread.waiting")
    return Admission(Verdict.WAIT, describe(busy), first_wait=first)
