"""Fixtures of the store tests: every contract test runs against SQLite, the real PostgreSQL and
Supabase's REST API.

``store`` is parametrized over the three backends (SQLite in ``tmp_path``, PostgreSQL in the
session database of ``postgres_dsn``, and Supabase through ``postgrest_server`` — a PostgREST
stand-in executing on that same PostgreSQL database), migrated and connected. ``open_same``
opens a second, independent store on the same database (another process, as far as the
database can tell). ``fresh_url`` is an empty database of the backends that can migrate
themselves, for the migration tests.

A Supabase backend is named in these tests by a URL ``supabase+http://127.0.0.1:<port>``;
:func:`open_url` turns it into a :class:`agentrun.store.SupabaseStore` with the test key.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest

from agentrun import store as stores
from tests.store import postgrest_server as postgrest_server_module

BACKENDS = ["sqlite", "postgres", "supabase"]
SUPABASE_KEY = "sb_secret_agentrun-test-service-role-key"
SUPABASE_PREFIX = "supabase+"
_BEHIND: dict[str, str] = {}
"""The PostgreSQL DSN behind each Supabase URL handed out, for :func:`raw_fetch`."""

OpenSame = Callable[[], Awaitable[stores.Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def postgrest_server(postgres_dsn: str) -> Iterator[postgrest_server_module.PostgrestServer]:
    """The PostgREST stand-in on the session database, which holds the schema (Supabase's REST
    API cannot apply it: ``agentrun migrate`` does, with the direct connection string)."""
    import asyncio

    asyncio.run(stores.migrate_url(postgres_dsn))
    server = postgrest_server_module.PostgrestServer(postgres_dsn, SUPABASE_KEY).start()
    _BEHIND[SUPABASE_PREFIX + server.url] = postgres_dsn
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(backend: str, tmp_path: pathlib.Path, postgres_dsn: str, request: pytest.FixtureRequest) -> str:
    """The database URL of the backend under test (already holding the schema once migrated)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'agentrun.db'}"
    if backend == "supabase":
        server: postgrest_server_module.PostgrestServer = request.getfixturevalue("postgrest_server")
        return SUPABASE_PREFIX + server.url
    return postgres_dsn


def open_url(url: str) -> stores.Store:
    """A store for a test URL: :func:`agentrun.store.open_store`, or Supabase for ``supabase+…``."""
    if url.startswith(SUPABASE_PREFIX):
        return stores.SupabaseStore(url[len(SUPABASE_PREFIX):], SUPABASE_KEY)
    return stores.open_store(url)


@pytest.fixture
async def open_same(url: str) -> AsyncIterator[OpenSame]:
    opened: list[stores.Store] = []

    async def open_() -> stores.Store:
        s = open_url(url)
        await s.connect()
        opened.append(s)
        return s

    yield open_
    for s in opened:
        await s.close()


@pytest.fixture
async def store(open_same: OpenSame) -> stores.Store:
    s = await open_same()
    await s.migrate()
    return s


@pytest.fixture
async def fresh_url(backend: str, tmp_path: pathlib.Path, postgres_dsn: str) -> AsyncIterator[str]:
    """An empty database of the backend: a new SQLite file or a new PostgreSQL database."""
    assert backend != "supabase", "Supabase's REST API cannot migrate: use fresh_postgres with a PostgrestServer"
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'agentrun.db'}"
        return
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


def new_id() -> str:
    return str(uuid.uuid4())


async def raw_fetch(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of a query run directly on the database behind ``url``, bypassing the store.

    ``sql`` uses ``?`` placeholders; they become ``$1, $2, ...`` for PostgreSQL.
    """
    url = _BEHIND.get(url, url)
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(stores.sqlite_path(url))
        try:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]
        finally:
            conn.close()
    parts = sql.split("?")
    sql = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
    pg = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await pg.fetch(sql, *args)]
    finally:
        await pg.close()
