"""The database of runs, threads and messages: one contract, two backends.

The worker opens a store with :func:`open_store` from ``AGENTRUN_DATABASE_URL`` (SQLite
under the state directory when it is unset) and records every run, its phase transitions and
the conversation; ``agentrun migrate`` calls :func:`migrate_url`. The contract is
:class:`Store` (:mod:`agentrun.store.base`); :class:`PostgresStore` serves PostgreSQL and
Supabase's database, :class:`SqliteStore` is the embedded default for local use. The SQL
migrations ship inside this package (``migrations/<dialect>/NNNN_name.sql``).

URLs: ``postgresql://…`` or ``postgres://…``; ``sqlite:///relative/path``,
``sqlite:////absolute/path``, ``sqlite://:memory:`` (also ``sqlite:///:memory:`` and
``sqlite://``).
"""

from __future__ import annotations

import urllib.parse

from agentrun.store.base import MessageRecord, RunRecord, Store, StoreError, Unavailable
from agentrun.store.postgres import PostgresStore
from agentrun.store.sqlite import SqliteStore
from agentrun.store.supabase import SupabaseStore

__all__ = [
    "MessageRecord",
    "PostgresStore",
    "RunRecord",
    "SqliteStore",
    "Store",
    "SupabaseStore",
    "StoreError",
    "Unavailable",
    "migrate_url",
    "open_store",
    "sqlite_path",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")
SQLITE_SCHEME = "sqlite"


def open_store(url: str | None, *, default_sqlite_path: str = ".agentrun/agentrun.db") -> Store:
    """A store for ``url`` (not connected yet); SQLite at ``default_sqlite_path`` when ``url`` is empty.

    Raises ``ValueError`` naming the supported schemes for any other URL.
    """
    if not url:
        return SqliteStore(default_sqlite_path)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in POSTGRES_SCHEMES:
        return PostgresStore(url)
    if scheme == SQLITE_SCHEME:
        return SqliteStore(sqlite_path(url))
    raise ValueError(
        "unsupported database URL scheme "
        f"{scheme or '(none)'!r}: use postgresql://user@host:5432/db, postgres://…, "
        "sqlite:///relative/path, sqlite:////absolute/path or sqlite://:memory:"
    )


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite://`` URL (``:memory:`` for an in-memory database)."""
    if not url.lower().startswith(f"{SQLITE_SCHEME}://"):
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    rest = url[len(SQLITE_SCHEME) + 3:]
    if "?" in rest or "#" in rest:
        raise ValueError(f"sqlite:// URLs take no query or fragment: {url!r}")
    if rest in ("", ":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise ValueError(
            f"a sqlite URL needs three slashes before a path (sqlite:///relative, sqlite:////abs): {url!r}"
        )
    path = urllib.parse.unquote(rest[1:])
    if not path:
        raise ValueError(f"no path in {url!r}")
    return path


async def migrate_url(url: str | None, *, default_sqlite_path: str = ".agentrun/agentrun.db") -> list[str]:
    """Apply the pending migrations of the database at ``url``; the versions applied.

    Used by ``agentrun migrate``. Safe to run while workers migrate the same database.
    """
    async with open_store(url, default_sqlite_path=default_sqlite_path) as store:
        return await store.migrate()
