"""Fixtures of the store tests: every contract test runs against SQLite and the real PostgreSQL.

``store`` is parametrized over both backends (SQLite in ``tmp_path``, PostgreSQL in the
session database of ``postgres_dsn``), migrated and connected. ``open_same`` opens a second,
independent store on the same database (another process, as far as the database can tell).
``fresh_url`` is an empty database of each backend, for the migration tests.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from agentrun import store as stores

BACKENDS = ["sqlite", "postgres"]

OpenSame = Callable[[], Awaitable[stores.Store]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, tmp_path: pathlib.Path, postgres_dsn: str) -> str:
    """The database URL of the backend under test (already holding the schema once migrated)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'agentrun.db'}"
    return postgres_dsn


@pytest.fixture
async def open_same(url: str) -> AsyncIterator[OpenSame]:
    opened: list[stores.Store] = []

    async def open_() -> stores.Store:
        s = stores.open_store(url)
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
