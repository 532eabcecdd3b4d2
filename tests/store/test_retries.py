"""Retries of store operations: a database that goes away and comes back, on PostgreSQL and
Supabase; errors that are not the infrastructure's are never retried."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import structlog.testing
from starlette.requests import Request
from starlette.responses import Response

from agentrun import store as stores
from tests.store import conftest, postgrest_server
from tests.store.proxy import Proxy

PATIENT = stores.RetryPolicy(total_seconds=90, initial_seconds=0.1, max_seconds=1)


@pytest.fixture
async def proxy(postgres_dsn: str) -> AsyncIterator[Proxy]:
    parts = urllib.parse.urlsplit(postgres_dsn)
    proxy = Proxy(parts.port or 5432)
    await proxy.start()
    yield proxy
    if proxy._server is not None and proxy._server.is_serving():
        await proxy.cut()


def through(postgres_dsn: str, proxy: Proxy) -> str:
    parts = urllib.parse.urlsplit(postgres_dsn)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))


async def outage_then_write(s: stores.Store, proxy: Proxy) -> None:
    """Given a run, when the database goes away and a write starts, it completes once the
    database is back, and the row says so."""
    run = stores.RunRecord(id=conftest.new_id(), namespace="ns", name="r", thread_id=conftest.new_id(),
                           status="Running")
    await s.upsert_run(run)
    await proxy.cut()
    with structlog.testing.capture_logs() as logs:
        write = asyncio.get_running_loop().create_task(
            s.transition(run.id, "Succeeded", attempt=1, result="done", usage={"output_tokens": 7}))
        # The write keeps failing while the database is away (it is retried, not failed)...
        for _ in range(600):
            if sum(1 for e in logs if e["event"] == "store.retry") >= 3:
                break
            await asyncio.sleep(0.05)
        assert not write.done(), write
        # ...and succeeds once it is back.
        await proxy.start()
        assert await asyncio.wait_for(write, 120) is True
    retries = [e for e in logs if e["event"] == "store.retry"]
    assert len(retries) >= 3 and all(e["operation"] == "transition" for e in retries)
    got = await s.get_run(run.id)
    assert got is not None and (got.status, got.result, got.usage) == ("Succeeded", "done", {"output_tokens": 7})


async def test_a_postgres_write_succeeds_after_the_database_returns(postgres_dsn: str, proxy: Proxy) -> None:
    await stores.migrate_url(postgres_dsn)
    inner = stores.PostgresStore(through(postgres_dsn, proxy), min_size=1, max_size=2, connect_timeout=2)
    async with stores.RetryingStore(inner, PATIENT) as s:
        await outage_then_write(s, proxy)


async def test_a_supabase_write_succeeds_after_the_database_returns(postgres_dsn: str, proxy: Proxy) -> None:
    # Given a PostgREST whose database connection goes through the proxy: while it is cut,
    # PostgREST answers 503 PGRST000, which the store takes as Unavailable
    await stores.migrate_url(postgres_dsn)
    server = postgrest_server.PostgrestServer(through(postgres_dsn, proxy), conftest.SUPABASE_KEY).start()
    try:
        async with stores.RetryingStore(stores.SupabaseStore(server.url, conftest.SUPABASE_KEY), PATIENT) as s:
            await outage_then_write(s, proxy)
    finally:
        server.stop()


def gateway_503(_request: Request) -> Response:
    return Response("<html>503 Service Temporarily Unavailable</html>", status_code=503, media_type="text/html")


async def test_a_supabase_gateway_error_is_retried_and_the_bare_store_says_unavailable(
    postgrest_server: postgrest_server.PostgrestServer,
) -> None:
    bare = stores.SupabaseStore(postgrest_server.url, conftest.SUPABASE_KEY)
    async with bare, stores.RetryingStore(bare, PATIENT) as patient:
        thread = conftest.new_id()
        postgrest_server.fail_next.append(gateway_503)
        with pytest.raises(stores.Unavailable, match=r"\[503\]"):
            await bare.ensure_thread(thread, namespace="ns")
        postgrest_server.fail_next.extend([gateway_503, gateway_503])
        await patient.ensure_thread(thread, namespace="ns")
        message = await patient.add_message(thread, "user", "hi")
        assert [m.id for m in await patient.list_messages(thread)] == [message.id]


@pytest.mark.parametrize("backend", ["postgres", "supabase"])
async def test_constraint_errors_and_lost_compare_and_sets_are_never_retried(store: stores.Store) -> None:
    patient = stores.RetryingStore(store, PATIENT)
    with structlog.testing.capture_logs() as logs:
        # A message for a thread that does not exist: the caller's mistake, failed at once
        with pytest.raises(stores.StoreError, match="does not exist") as caught:
            await patient.add_message(conftest.new_id(), "user", "x")
        assert not isinstance(caught.value, stores.Unavailable)
        # A thread in another namespace
        thread = conftest.new_id()
        await patient.ensure_thread(thread, namespace="a")
        with pytest.raises(stores.StoreError, match="belongs to namespace"):
            await patient.ensure_thread(thread, namespace="b")
        # A compare-and-set that loses is an answer, not an error
        run = stores.RunRecord(id=conftest.new_id(), namespace="a", name="r", thread_id=thread, status="Succeeded")
        await patient.upsert_run(run)
        assert await patient.transition(run.id, "Running", attempt=1) is False
    assert [e for e in logs if e["event"] == "store.retry"] == []
