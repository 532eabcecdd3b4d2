"""What ``agentrun logs -f`` says it missed after getting Redis back (``clients.cluster``)."""

from __future__ import annotations

import asyncio

import fakeredis

from agentrun import keys, streams
from agentrun.clients import cluster


def gap(entries: int, cursor_index: int | None, *, erase_before: int = 0) -> str:
    async def check() -> str:
        client = fakeredis.FakeAsyncRedis()
        key = keys.stream("uid-1")
        ids = [(await client.xadd(key, {streams.FIELD: b"{}"})).decode() for _ in range(entries)]
        cursor = streams.START if cursor_index is None else ids[cursor_index]
        if erase_before:
            await client.xdel(key, *ids[:erase_before])
        return await cluster._what_was_missed(client, "uid-1", cursor)

    return asyncio.run(check())


def test_nothing_was_missed_when_redis_kept_the_stream() -> None:
    assert gap(3, 1) == "nothing was missed"
    assert gap(3, None) == "nothing was missed"


def test_a_stream_that_came_back_without_the_cursor_is_reported() -> None:
    text = gap(4, 1, erase_before=3)
    assert text.startswith("Redis restarted without this run's stream") and "are lost" in text


def test_a_stream_that_is_gone_is_reported() -> None:
    assert "came back without this run's stream" in gap(0, None)
