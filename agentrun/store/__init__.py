"""The database of runs, threads and messages: one contract, three backends.

The worker and the operator open the store their settings name with :func:`from_settings`
(``AGENTRUN_DATABASE_URL``; else ``SUPABASE_URL`` + service key; else SQLite under the state
directory), wrapped in retries on infrastructure errors (:mod:`agentrun.store.retrying`);
``agentrun migrate`` calls :func:`migrate_url`. The contract is :class:`Store`
(:mod:`agentrun.store.base`); :class:`PostgresStore` serves PostgreSQL (and Supabase's
database over a connection string), :class:`SupabaseStore` Supabase's REST API with the
``supabase`` client, :class:`SqliteStore` is the embedded default for local use. The SQL
migrations ship inside this package (``migrations/<dialect>/NNNN_name.sql``).

URLs: ``postgresql://…`` or ``postgres://…``; ``sqlite:///relative/path``,
``sqlite:////absolute/path``, ``sqlite://:memory:`` (also ``sqlite:///:memory:`` and
``sqlite://``).
"""

from __future__ import annotations

import urllib.parse

from agentrun import settings
from agentrun.store.base import MessageRecord, RunRecord, Store, StoreError, Unavailable
from agentrun.store.postgres import PostgresStore
from agentrun.store.retrying import RetryingStore, RetryPolicy
from agentrun.store.sqlite import SqliteStore
from agentrun.store.supabase import SupabaseStore

__all__ = [
    "MessageRecord",
    "PostgresStore",
    "RetryPolicy",
    "RetryingStore",
    "RunRecord",
    "SqliteStore",
    "Store",
    "SupabaseStore",
    "StoreError",
    "Unavailable",
    "configured",
    "from_settings",
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


def from_settings(config: settings.Settings, *, default_sqlite_path: str | None = None) -> Store:
    """The store ``config`` names (not connected yet), with retries on infrastructure errors.

    ``AGENTRUN_DATABASE_URL`` when set; otherwise Supabase's REST API when ``SUPABASE_URL`` is
    set (its service key is then required); otherwise SQLite at ``default_sqlite_path``
    (``<state_dir>/agentrun.db`` by default). ``ValueError`` names what is missing.
    """
    policy = RetryPolicy(total_seconds=config.database_retry_seconds)
    if config.database_url:
        return RetryingStore(open_store(config.database_url), policy)
    if config.supabase_url:
        key = config.supabase_key.get_secret_value() if config.supabase_key is not None else ""
        if not key:
            raise ValueError(
                "SUPABASE_URL is set but no key: set AGENTRUN_SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY to the "
                "project's service-role key (or AGENTRUN_DATABASE_URL to use a database URL instead)"
            )
        return RetryingStore(SupabaseStore(config.supabase_url, key), policy)
    path = default_sqlite_path or f"{config.state_dir.rstrip('/')}/agentrun.db"
    return RetryingStore(SqliteStore(path), policy)


def configured(config: settings.Settings) -> bool:
    """Whether ``config`` names a database (a URL or Supabase), not only the SQLite default."""
    return bool(config.database_url or config.supabase_url)


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
