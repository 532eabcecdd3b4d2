"""Opening stores: URL parsing, unreachable databases, errors that say what to do next."""

from __future__ import annotations

import asyncio
import pathlib
import time
import urllib.parse

import pytest

from agentrun import store as stores
from tests.store.proxy import Proxy


@pytest.mark.parametrize(
    ("url", "kind", "path"),
    [
        ("sqlite:///relative/agentrun.db", stores.SqliteStore, "relative/agentrun.db"),
        ("sqlite:////abs/path/agentrun.db", stores.SqliteStore, "/abs/path/agentrun.db"),
        ("sqlite://:memory:", stores.SqliteStore, ":memory:"),
        ("sqlite:///:memory:", stores.SqliteStore, ":memory:"),
        ("sqlite://", stores.SqliteStore, ":memory:"),
        ("sqlite:///with%20space.db", stores.SqliteStore, "with space.db"),
        ("postgresql://u:p@db:5432/agentrun", stores.PostgresStore, None),
        ("postgres://u@db/agentrun", stores.PostgresStore, None),
        ("POSTGRESQL://u@db/agentrun", stores.PostgresStore, None),
    ],
)
def test_open_store_picks_the_backend_from_the_url(url: str, kind: type, path: str | None) -> None:
    s = stores.open_store(url)
    assert isinstance(s, kind)
    if path is not None:
        assert isinstance(s, stores.SqliteStore) and s.path == path


def test_no_url_means_sqlite_at_the_default_path() -> None:
    s = stores.open_store(None, default_sqlite_path="/state/agentrun.db")
    assert isinstance(s, stores.SqliteStore) and s.path == "/state/agentrun.db"
    assert isinstance(stores.open_store(""), stores.SqliteStore)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://localhost", "agentrun.db", "sqlite:relative.db",
                                 "sqlite://host/path.db", "sqlite:///x.db?mode=ro"])
def test_other_urls_are_refused_with_the_supported_forms(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite|postgres"):
        stores.open_store(url)


def test_the_password_never_shows() -> None:
    s = stores.open_store("postgresql://agent:s3cret@db:5432/agentrun")
    assert "s3cret" not in repr(s) and "s3cret" not in str(getattr(s, "url", ""))


async def test_an_unreachable_postgres_is_unavailable_quickly() -> None:
    s = stores.PostgresStore("postgresql://agent:s3cret@127.0.0.1:1/agentrun", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(stores.Unavailable) as caught:
        await s.connect()
    assert time.monotonic() - started < 5
    assert "s3cret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    assert isinstance(caught.value, stores.StoreError)


async def test_a_silent_postgres_times_out_as_unavailable() -> None:
    # A listening socket that never answers the startup message
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        s = stores.PostgresStore(f"postgresql://u@127.0.0.1:{port}/db", connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(stores.Unavailable):
            await s.connect()
        assert time.monotonic() - started < 3
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_database_that_goes_away_is_unavailable_until_it_returns(postgres_dsn: str) -> None:
    # Given a store connected through a proxy
    parts = urllib.parse.urlsplit(postgres_dsn)
    proxy = Proxy(parts.port or 5432)
    await proxy.start()
    dsn = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    async with stores.PostgresStore(dsn, min_size=1, max_size=2, connect_timeout=2) as s:
        await s.migrate()
        assert await s.get_run("x") is None
        # When the database goes away, calls fail as Unavailable (retryable), quickly
        await proxy.cut()
        for _ in range(3):
            with pytest.raises(stores.Unavailable):
                await s.transition("x", "Running", attempt=1)
        # And once it is back, the same store works again without reconnecting by hand
        await proxy.start()
        assert await s.get_run("x") is None
        await proxy.cut()


async def test_a_missing_database_is_a_store_error_not_unavailable(postgres_dsn: str) -> None:
    s = stores.PostgresStore(postgres_dsn.rsplit("/", 1)[0] + "/agentrun_no_such_db", connect_timeout=2)
    with pytest.raises(stores.StoreError) as caught:
        await s.connect()
    assert not isinstance(caught.value, stores.Unavailable)
    assert "does not exist" in str(caught.value)


async def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(stores.Unavailable):
        await stores.SqliteStore(str(blocker / "agentrun.db")).connect()


@pytest.mark.parametrize("url", ["sqlite://:memory:", "postgresql://u@127.0.0.1:1/db"])
async def test_using_a_store_before_connect_says_so(url: str) -> None:
    with pytest.raises(stores.StoreError, match="not connected"):
        await stores.open_store(url).get_run("x")


async def test_closing_twice_is_harmless(postgres_dsn: str) -> None:
    for url in ("sqlite://:memory:", postgres_dsn):
        s = stores.open_store(url)
        await s.connect()
        await s.close()
        await s.close()
