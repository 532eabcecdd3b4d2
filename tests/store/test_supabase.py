"""What only the Supabase backend has: the key, the REST requests, the schema check, the choice
from settings; and the PostgreSQL store's options for Supabase's transaction pooler.

The contract itself (runs, phases, messages, JSON) runs against Supabase in ``test_runs.py``
and ``test_messages.py``, through ``postgrest_server`` on the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import structlog.testing

from agentrun import settings
from agentrun import store as stores
from agentrun.store import base, postgres
from tests.store import conftest, postgrest_server

KEY = conftest.SUPABASE_KEY


def run_record(**fields: object) -> stores.RunRecord:
    values: dict[str, object] = {"id": conftest.new_id(), "namespace": "ns", "name": "r",
                                 "thread_id": conftest.new_id(), "status": "Queued"}
    values.update(fields)
    return stores.RunRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
async def supabase(postgrest_server: postgrest_server.PostgrestServer) -> AsyncIterator[stores.SupabaseStore]:
    async with stores.SupabaseStore(postgrest_server.url, KEY) as s:
        yield s


# -- the key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sb_secret_wrong", "eyJhbGciOiJIUzI1NiJ9.e30.wrong"])
async def test_a_wrong_key_is_refused_with_a_clear_error_that_never_shows_it(
    postgrest_server: postgrest_server.PostgrestServer, key: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with stores.SupabaseStore(postgrest_server.url, key) as s:
            with pytest.raises(stores.StoreError) as caught:
                await s.get_run("x")
    assert not isinstance(caught.value, stores.Unavailable)  # retrying will not help
    assert "refused the key" in str(caught.value) and "Invalid API key" in str(caught.value)
    shown = [str(caught.value), repr(s), caplog.text, str(logs)]
    assert all(key not in text for text in shown)


async def test_a_missing_key_is_refused_by_the_gateway(postgrest_server: postgrest_server.PostgrestServer) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{postgrest_server.url}/rest/v1/agent_runs")
        assert answer.status_code == 401 and answer.json()["message"] == "No API key found in request"
        # a right apikey with someone else's token is PostgREST's refusal
        answer = await client.get(f"{postgrest_server.url}/rest/v1/agent_runs",
                                  headers={"apikey": KEY, "Authorization": "Bearer other"})
        assert answer.status_code == 401 and answer.json()["code"] == "PGRST301"


async def test_the_key_never_shows_when_supabase_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"sb_secret_{uuid.uuid4().hex}"
    with structlog.testing.capture_logs() as logs:
        async with stores.SupabaseStore("http://127.0.0.1:1", secret, timeout=2) as s:
            with pytest.raises(stores.Unavailable) as caught:
                await s.transition("x", "Running", attempt=1)
    assert "127.0.0.1:1" in str(caught.value)
    assert all(secret not in text for text in (str(caught.value), repr(s), caplog.text, str(logs)))


def test_the_url_and_key_are_checked_before_any_request() -> None:
    with pytest.raises(ValueError, match="SUPABASE_URL must be the project's http"):
        stores.SupabaseStore("postgresql://db/x", KEY)
    with pytest.raises(ValueError, match="AGENTRUN_SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"):
        stores.SupabaseStore("https://ref.supabase.co", "")
    assert "user" not in repr(stores.SupabaseStore("https://user:pw@ref.supabase.co/?apikey=k", KEY))


# -- what goes over the wire and into the database -------------------------------------------------


async def test_writes_are_function_calls_and_reads_are_filtered_table_requests(
    supabase: stores.SupabaseStore, postgrest_server: postgrest_server.PostgrestServer,
) -> None:
    run = run_record()
    postgrest_server.requests.clear()
    await supabase.upsert_run(run)
    assert await supabase.transition(run.id, "Running", attempt=1)
    await supabase.get_run(run.id)
    await supabase.list_runs(namespace="ns", status="Running", limit=5)
    methods = [(m, path.split("?")[0]) for m, path in postgrest_server.requests]
    assert methods == [
        ("POST", "/rest/v1/rpc/agentrun_upsert_run"),
        ("POST", "/rest/v1/rpc/agentrun_transition"),
        ("GET", "/rest/v1/agent_runs"),
        ("GET", "/rest/v1/agent_runs"),
    ]
    assert f"id=eq.{run.id}" in postgrest_server.requests[2][1]
    listing = postgrest_server.requests[3][1]
    assert all(part in listing for part in ("namespace=eq.ns", "status=eq.Running", "order=created_at.desc",
                                            "limit=5"))


async def test_json_columns_are_jsonb_in_the_database(supabase: stores.SupabaseStore, postgres_dsn: str) -> None:
    run = run_record(metadata={"model": "m", "tags": ["a"]}, usage={"input_tokens": 3})
    await supabase.upsert_run(run)
    await supabase.ensure_thread(run.thread_id, namespace="ns", metadata={"title": "t"})
    await supabase.add_message(run.thread_id, "tool", {"result": [1, None]})
    rows = await conftest.raw_fetch(
        postgres_dsn,
        "SELECT jsonb_typeof(r.metadata), jsonb_typeof(r.usage), r.usage->>'input_tokens', jsonb_typeof(m.content)"
        " FROM agent_runs r JOIN messages m ON m.thread_id = r.thread_id WHERE r.id = ?", run.id)
    assert rows == [("object", "object", "3", "object")]


async def test_a_constraint_violation_is_a_store_error_on_both_postgres_backends(
    supabase: stores.SupabaseStore, postgres_dsn: str,
) -> None:
    async with stores.open_store(postgres_dsn) as direct:
        for s in (supabase, direct):
            with pytest.raises(stores.StoreError, match="agent_runs_attempt_check") as caught:
                await s.upsert_run(run_record(attempt=0))
            assert not isinstance(caught.value, stores.Unavailable)


def test_the_transition_function_holds_the_phase_rule_python_generates() -> None:
    [functions] = [m for m in base.load_migrations("postgres") if m.version == "0002_rest_functions"]
    assert base.transition_allowed_sql("p_status", "p_attempt") in functions.sql


# -- the schema -----------------------------------------------------------------------------------


@pytest.fixture
async def fresh_postgres(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"agentrun_fresh_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{postgres_dsn.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_migrate_says_how_to_apply_the_schema_and_then_finds_it(fresh_postgres: str) -> None:
    server = postgrest_server.PostgrestServer(fresh_postgres, KEY).start()
    try:
        async with stores.SupabaseStore(server.url, KEY) as s:
            # Given an empty project: the REST API cannot create tables, so migrate says what to run
            with pytest.raises(stores.StoreError, match="agentrun migrate --database-url"):
                await s.migrate()
            # And a project that has only the first version names the missing one
            async with stores.open_store(fresh_postgres) as direct:
                await direct.migrate()
            await conftest.raw_fetch(fresh_postgres, "DELETE FROM schema_migrations WHERE version = ?",
                                     "0002_rest_functions")
            with pytest.raises(stores.StoreError, match="lacks schema versions 0002_rest_functions"):
                await s.migrate()
            # When `agentrun migrate` has applied it, nothing is pending and the store works
            assert await stores.migrate_url(fresh_postgres) == ["0002_rest_functions"]
            assert await s.migrate() == []
            await s.upsert_run(run_record())
    finally:
        server.stop()


# -- the choice of backend ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("AGENTRUN_DATABASE_URL", "SUPABASE_URL", "AGENTRUN_SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY",
                 "AGENTRUN_SUPABASE_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def chosen(env: pytest.MonkeyPatch, **values: str) -> stores.Store:
    for name, value in values.items():
        env.setenv(name, value)
    s = stores.from_settings(settings.Settings())
    assert isinstance(s, stores.RetryingStore)
    return s.inner


def test_supabase_url_and_service_key_select_the_supabase_backend(clean_env: pytest.MonkeyPatch) -> None:
    s = chosen(clean_env, SUPABASE_URL="https://ref.supabase.co", SUPABASE_SERVICE_ROLE_KEY="k1")
    assert isinstance(s, stores.SupabaseStore) and s.url == "https://ref.supabase.co"
    assert s._key == "k1"
    # agentrun's own names win over Supabase's
    s = chosen(clean_env, AGENTRUN_SUPABASE_KEY="k2", AGENTRUN_SUPABASE_URL="https://other.supabase.co")
    assert isinstance(s, stores.SupabaseStore) and (s.url, s._key) == ("https://other.supabase.co", "k2")
    assert "k2" not in repr(settings.Settings())


def test_a_database_url_wins_over_supabase(clean_env: pytest.MonkeyPatch) -> None:
    s = chosen(clean_env, SUPABASE_URL="https://ref.supabase.co", SUPABASE_SERVICE_ROLE_KEY="k",
               AGENTRUN_DATABASE_URL="postgresql://u@db/agentrun")
    assert isinstance(s, stores.PostgresStore)


def test_supabase_without_a_key_is_refused_naming_the_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SUPABASE_URL", "https://ref.supabase.co")
    with pytest.raises(ValueError, match="AGENTRUN_SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"):
        stores.from_settings(settings.Settings())


def test_nothing_configured_is_sqlite_under_the_state_dir(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGENTRUN_STATE_DIR", "/state")
    s = chosen(clean_env)
    assert isinstance(s, stores.SqliteStore) and s.path == "/state/agentrun.db"
    assert not stores.configured(settings.Settings())


# -- PostgreSQL through a transaction pooler ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected", "pooled"),
    [
        ("postgresql://u:p@db:5432/x?pgbouncer=true", "postgresql://u:p@db:5432/x", True),
        ("postgresql://u:p@db:5432/x?sslmode=require&pgbouncer=true", "postgresql://u:p@db:5432/x?sslmode=require",
         True),
        ("postgresql://u.ref:p@aws-0-eu.pooler.supabase.com:6543/postgres", None, True),
        ("postgresql://u:p@db:6543/x?pgbouncer=false", "postgresql://u:p@db:6543/x", False),
        ("postgresql://u:p@db:5432/x", None, False),
        ("postgresql://u@h1:5432,h2:5432/x", None, False),
    ],
)
def test_a_transaction_pooler_is_recognised_from_the_url(dsn: str, expected: str | None, pooled: bool) -> None:
    assert postgres.pooler_dsn(dsn) == (expected or dsn, pooled)


async def test_a_pooler_url_turns_the_statement_cache_off_and_the_store_works(postgres_dsn: str) -> None:
    s = stores.PostgresStore(postgres_dsn + "?pgbouncer=true")
    assert s._statement_cache_size == 0 and "pgbouncer" not in s._dsn
    assert stores.PostgresStore(postgres_dsn)._statement_cache_size == 100
    async with s:
        assert await s.migrate() == []
        run = run_record()
        await s.upsert_run(run)
        assert await s.transition(run.id, "Running", attempt=1)


async def test_migrate_leaves_no_session_lock_behind(postgres_dsn: str) -> None:
    # Two stores migrating at once, then: no advisory lock held by anyone (a session lock
    # would stay on a pooled server connection behind pgbouncer)
    opened = [stores.open_store(postgres_dsn) for _ in range(2)]
    for s in opened:
        await s.connect()
    try:
        await asyncio.gather(*(s.migrate() for s in opened))
        rows = await conftest.raw_fetch(
            postgres_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        assert rows == [(0,)]
    finally:
        for s in opened:
            await s.close()


def test_agentrun_migrate_with_supabase_checks_the_schema_and_says_what_to_run(
    postgrest_server: postgrest_server.PostgrestServer, tmp_path: pathlib.Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRUN_", "SUPABASE_"))}
    env.update(SUPABASE_URL=postgrest_server.url, AGENTRUN_SUPABASE_KEY=KEY, AGENTRUN_STATE_DIR=str(tmp_path))
    agentrun = str(pathlib.Path(sys.executable).parent / "agentrun")
    done = subprocess.run([agentrun, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema is up to date" in " ".join(done.stdout.split())
    assert not (tmp_path / "agentrun.db").exists()  # no local SQLite migrated by mistake
    # An unreachable project: the command fails and says so, without the key
    env.update(SUPABASE_URL="http://127.0.0.1:1", AGENTRUN_DATABASE_RETRY_SECONDS="1")
    failed = subprocess.run([agentrun, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "cannot reach Supabase" in " ".join(failed.stdout.split())
    assert KEY not in failed.stdout + failed.stderr
