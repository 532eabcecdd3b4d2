"""Schema migrations on SQLite and the real PostgreSQL: shipped with the package, applied once."""

from __future__ import annotations

import asyncio
import importlib.resources

import pytest

from agentrun import phases
from agentrun import store as stores
from agentrun.store import base
from tests.store import conftest

VERSIONS = [m.version for m in base.load_migrations("postgres")]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends that apply their own migrations (Supabase's: ``test_supabase.py``)."""
    return str(request.param)


def test_both_dialects_ship_the_same_versions_as_package_data() -> None:
    root = importlib.resources.files("agentrun.store").joinpath("migrations")
    versions = {d: [m.version for m in base.load_migrations(d)] for d in ("postgres", "sqlite")}
    assert versions["postgres"] == versions["sqlite"]
    assert versions["postgres"][0] == "0001_init"
    assert root.joinpath("postgres", "0001_init.sql").is_file()


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_the_status_check_lists_exactly_the_phases(dialect: str) -> None:
    [init] = [m for m in base.load_migrations(dialect) if m.version == "0001_init"]
    assert f"CHECK (status IN ({base.PHASES_SQL}))" in init.sql
    assert len(list(phases.Phase)) == 7


async def test_migrate_twice_applies_nothing_the_second_time(fresh_url: str) -> None:
    async with stores.open_store(fresh_url) as s:
        assert await s.migrate() == VERSIONS
        assert await s.migrate() == []
    assert await stores.migrate_url(fresh_url) == []
    rows = await conftest.raw_fetch(fresh_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert rows == [(v,) for v in VERSIONS]


async def test_concurrent_migrations_apply_each_file_once(fresh_url: str) -> None:
    # Given four stores (four worker processes starting together) on an empty database
    opened = [stores.open_store(fresh_url) for _ in range(4)]
    for s in opened:
        await s.connect()
    try:
        # When all migrate at once
        results = await asyncio.gather(*(s.migrate() for s in opened))
    finally:
        for s in opened:
            await s.close()
    # Then each file was applied exactly once, in order, and the others found nothing pending
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert all(applied == sorted(applied) for applied in results)


async def test_migrate_url_creates_the_sqlite_folder(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/deep/er/agentrun.db"
    assert await stores.migrate_url(url) == VERSIONS
    assert await stores.migrate_url(url) == []


async def test_the_database_refuses_an_unknown_status(store: stores.Store, url: str) -> None:
    with pytest.raises(Exception, match="agent_runs_status_check|CHECK constraint"):
        await conftest.raw_fetch(
            url, "INSERT INTO agent_runs (id, namespace, name, thread_id, status, created_at, updated_at)"
            " VALUES (?, 'ns', 'n', 't', 'Bogus', '2030-01-01T00:00:00+00:00', '2030-01-01T00:00:00+00:00')"
            if url.startswith("sqlite") else
            "INSERT INTO agent_runs (id, namespace, name, thread_id, status) VALUES (?, 'ns', 'n', 't', 'Bogus')",
            conftest.new_id(),
        )
