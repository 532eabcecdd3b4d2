"""Threads and messages in the store, on SQLite, the real PostgreSQL and Supabase: order, idempotency, JSON."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import textwrap

import pytest

from agentrun import store as stores
from tests.store import conftest


async def new_thread(store: stores.Store, namespace: str = "team-a") -> str:
    thread_id = conftest.new_id()
    await store.ensure_thread(thread_id, namespace=namespace)
    return thread_id


async def test_messages_come_back_in_order_with_increasing_seq(store: stores.Store) -> None:
    thread = await new_thread(store)
    run_id = conftest.new_id()
    written = [await store.add_message(thread, role, f"m{i}", run_id=run_id)
               for i, role in enumerate(["system", "user", "assistant", "tool", "assistant"])]
    assert [m.seq for m in written] == [1, 2, 3, 4, 5]
    got = await store.list_messages(thread)
    assert got == written
    assert [m.content for m in await store.list_messages(thread, after_seq=2, limit=2)] == ["m2", "m3"]
    assert await store.list_messages(thread, after_seq=5) == []
    assert all(m.created_at.utcoffset() == datetime.timedelta(0) and m.run_id == run_id for m in got)


async def test_fifty_concurrent_messages_on_one_thread_get_distinct_seqs(store: stores.Store) -> None:
    thread = await new_thread(store)
    written = await asyncio.gather(*(store.add_message(thread, "assistant", {"i": i}) for i in range(50)))
    assert sorted(m.seq for m in written) == list(range(1, 51))
    listed = await store.list_messages(thread)
    assert [m.seq for m in listed] == list(range(1, 51))
    assert sorted(m.content["i"] for m in listed) == list(range(50))


async def test_writers_on_two_connections_never_share_a_seq(store: stores.Store, open_same: conftest.OpenSame) -> None:
    # Given two independent stores on one database (two worker processes)
    other = await open_same()
    thread = await new_thread(store)
    # When both append to the same thread at once
    written = await asyncio.gather(
        *(s.add_message(thread, "user", i) for i in range(20) for s in (store, other))
    )
    # Then every message has its own seq and both see the same history
    assert sorted(m.seq for m in written) == list(range(1, 41))
    assert await store.list_messages(thread) == await other.list_messages(thread)


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.store import conftest

    async def main(url, thread, tag):
        async with conftest.open_url(url) as s:
            for i in range(15):
                await s.add_message(thread, "user", {"tag": tag, "i": i})

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_writer_processes_on_one_database_never_share_a_seq(store: stores.Store, url: str) -> None:
    # Given a thread and three separate processes appending to it at once
    thread = await new_thread(store)
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, thread, str(tag),
                                             stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
        for tag in range(3)
    ]
    for proc in procs:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
    # Then the thread holds 45 messages, seq 1..45, each process's own in its order
    got = await store.list_messages(thread)
    assert [m.seq for m in got] == list(range(1, 46))
    for tag in ("0", "1", "2"):
        assert [m.content["i"] for m in got if m.content["tag"] == tag] == list(range(15))


async def test_add_message_is_idempotent_on_its_id(store: stores.Store) -> None:
    thread = await new_thread(store)
    run = conftest.new_id()  # ids unique to this test: the backends may share one database
    first = await store.add_message(thread, "user", "hello", message_id=f"{run}/input")
    # The same id again (a redelivered message), even with other content, changes nothing
    again = await store.add_message(thread, "user", "something else", message_id=f"{run}/input")
    assert again == first
    # Also when the duplicates race
    racing = await asyncio.gather(
        *(store.add_message(thread, "assistant", i, message_id=f"{run}/1/1") for i in range(10))
    )
    assert len({(m.id, m.seq, str(m.content)) for m in racing}) == 1
    assert [m.seq for m in await store.list_messages(thread)] == [1, 2]
    await store.add_message(thread, "assistant", "next")
    assert [m.seq for m in await store.list_messages(thread)] == [1, 2, 3]


async def test_a_message_id_cannot_move_to_another_thread(store: stores.Store) -> None:
    a, b = await new_thread(store), await new_thread(store)
    message_id = conftest.new_id()
    await store.add_message(a, "user", "x", message_id=message_id)
    with pytest.raises(stores.StoreError, match="already belongs to thread"):
        await store.add_message(b, "user", "x", message_id=message_id)
    assert await store.list_messages(b) == []


async def test_a_message_needs_an_existing_thread(store: stores.Store) -> None:
    with pytest.raises(stores.StoreError, match="does not exist: call ensure_thread"):
        await store.add_message(conftest.new_id(), "user", "x")


async def test_content_of_any_json_shape_round_trips(store: stores.Store) -> None:
    thread = await new_thread(store)
    contents = [
        "plain text with ünïcødé, 中文 and 🚀",
        {"type": "tool_call", "args": {"query": "q", "nested": [[1, 2], {"deep": {"deeper": None}}]}},
        [{"type": "text", "text": "a"}, {"type": "image", "url": "https://example.com/x.png"}],
        42,
        3.5,
        True,
        None,
        "",
        {"quote": "\"'\\ \n\t"},
    ]
    written = [await store.add_message(thread, "tool", c) for c in contents]
    assert [m.content for m in written] == contents
    assert [m.content for m in await store.list_messages(thread)] == contents


async def test_ensure_thread_is_idempotent_and_merges_metadata(store: stores.Store) -> None:
    thread = conftest.new_id()
    await store.ensure_thread(thread, namespace="team-a", metadata={"title": "Trip ✈", "n": 1})
    await store.ensure_thread(thread, namespace="team-a")
    await asyncio.gather(*(store.ensure_thread(thread, namespace="team-a", metadata={"n": 2}) for _ in range(5)))
    await store.add_message(thread, "user", "still one thread")
    assert [m.seq for m in await store.list_messages(thread)] == [1]


async def test_a_thread_never_crosses_namespaces(store: stores.Store) -> None:
    thread = await new_thread(store, namespace="team-a")
    with pytest.raises(stores.StoreError, match="belongs to namespace 'team-a'"):
        await store.ensure_thread(thread, namespace="team-b")


async def test_thread_metadata_merges_top_level_keys(store: stores.Store, url: str) -> None:
    thread = conftest.new_id()
    await store.ensure_thread(thread, namespace="team-a", metadata={"title": "Trip ✈", "n": 1})
    await store.ensure_thread(thread, namespace="team-a", metadata={"n": 2, "tags": ["x"]})
    await store.ensure_thread(thread, namespace="team-a")
    [(text,)] = await conftest.raw_fetch(url, "SELECT metadata FROM threads WHERE id = ?", thread)
    assert json.loads(str(text)) == {"title": "Trip ✈", "n": 2, "tags": ["x"]}
