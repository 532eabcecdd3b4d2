"""The watch cache: recent changes, and the watch streams that replay and follow them.

:mod:`.apiserver` records every committed change in a :class:`History` (a bounded log, like
kube-apiserver's watch cache) and serves each ``?watch=true`` request with :func:`stream`.
A stream sends the initial state if asked, then every change after its ``resourceVersion``
cursor that its selector matches, with the object as it was at that version; a cursor older
than the log gets the 410 ``Expired`` error that makes clients list again.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from agentrun_local.emulator import errors

Storage = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Event:
    """One committed change: the object (stored form) at ``rv``, and as it was before."""

    rv: int
    storage: Storage
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


class History:
    """The last changes of all resources, in resourceVersion order, and a wake-up for watchers."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self.floor = 0  # the newest version no longer in the log (a cursor below it is too old)
        self.closed = False
        self._changed: asyncio.Event | None = None

    def record(self, event: Event, *, keep: int) -> None:
        self._events.append(event)
        excess = len(self._events) - keep
        if excess > 0:
            self.floor = self._events[excess - 1].rv
            del self._events[:excess]
        self.notify()

    def since(self, rv: int) -> list[Event]:
        return self._events[bisect.bisect_right(self._events, rv, key=lambda e: e.rv):]

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def waiter(self) -> asyncio.Event:
        """An event set at the next change (take it before reading, so no change slips by)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def close(self) -> None:
        """End all streams (the server is stopping)."""
        self.closed = True
        self.notify()


@dataclasses.dataclass(frozen=True)
class Watch:
    """What one watch request asked for, and how to present what it gets."""

    storage: Storage
    matches: Callable[[Mapping[str, Any]], bool]
    render: Callable[[str, Mapping[str, Any]], dict[str, Any]]  # (type, stored object) -> event
    bookmark: Callable[[int, Mapping[str, str] | None], dict[str, Any]]  # (rv, annotations) -> event
    cursor: int
    initial: Sequence[Mapping[str, Any]] | None  # the state to send first, as ADDED
    timeout: float
    bookmarks: bool  # allowWatchBookmarks
    initial_end: bool  # sendInitialEvents: end the initial state with a marked BOOKMARK
    bookmark_interval: float


async def stream(history: History, watch: Watch) -> AsyncIterator[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + watch.timeout
    next_bookmark = loop.time() + watch.bookmark_interval
    cursor = watch.cursor

    if watch.initial is not None:
        for stored in watch.initial:
            yield watch.render("ADDED", stored)
        if watch.initial_end and watch.bookmarks:
            yield watch.bookmark(cursor, {"k8s.io/initial-events-end": "true"})

    while not history.closed:
        if cursor < history.floor:
            status = errors.gone(f"too old resource version: {cursor} ({history.floor})").status()
            yield {"type": "ERROR", "object": status}
            return
        waiter = history.waiter()
        batch = history.since(cursor)
        if batch:
            cursor = batch[-1].rv
            for event in batch:
                if event.storage != watch.storage:
                    continue
                now_in = watch.matches(event.obj)
                was_in = event.old is not None and watch.matches(event.old)
                if event.type == "MODIFIED" and now_in and not was_in:
                    yield watch.render("ADDED", event.obj)  # started matching the selector
                elif event.type == "MODIFIED" and was_in and not now_in:
                    yield watch.render("DELETED", event.obj)  # stopped matching it
                elif now_in or (event.type == "DELETED" and was_in):
                    yield watch.render(event.type, event.obj)
            continue
        now = loop.time()
        if now >= deadline:
            return
        if watch.bookmarks and now >= next_bookmark:  # progress: where a resumed watch may start
            next_bookmark = now + watch.bookmark_interval
            yield watch.bookmark(cursor, None)
            continue
        wake = min(deadline, next_bookmark) if watch.bookmarks else deadline
        try:
            await asyncio.wait_for(waiter.wait(), timeout=wake - now)
        except TimeoutError:
            pass
