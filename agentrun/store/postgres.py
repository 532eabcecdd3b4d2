"""The PostgreSQL (and Supabase's PostgreSQL) backend of the store, on an asyncpg pool.

Built by :func:`agentrun.store.open_store` for ``postgresql://`` and ``postgres://`` URLs;
the worker uses it in a cluster and ``agentrun migrate`` applies its schema.

- Migrations run under a transaction-scoped advisory lock, so concurrent ``migrate`` calls
  (several workers starting at once) apply each file exactly once; each file runs in its own
  transaction together with its ``schema_migrations`` row.
- No session state: nothing of this store outlives a transaction (no session locks, ``SET``,
  ``LISTEN`` or temporary tables), so it works through a transaction pooler such as Supabase's
  (pgbouncer/Supavisor on port 6543). There prepared statements cannot be cached per
  connection either: the statement cache is turned off when the URL says ``pgbouncer=true``
  or uses port 6543 (see :func:`pooler_dsn`).
- A transition is one ``UPDATE ... WHERE <phase rule>``: the database decides, atomically.
- ``add_message`` locks the thread row (``SELECT ... FOR UPDATE``) and takes the next value of
  the thread's ``last_seq`` counter in the same transaction.
- JSON columns are passed as text and cast to ``jsonb``; they come back as text and are
  decoded here, so no connection needs a type codec.
- Connection failures become :class:`agentrun.store.base.Unavailable`; the URL is only ever
  logged or shown without its password.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import datetime
import urllib.parse
from typing import Any

import asyncpg
import structlog

from agentrun import log
from agentrun.store import base

logger = structlog.get_logger(__name__)

SUPABASE_POOLER_PORT = 6543
"""The port of Supabase's transaction pooler (its session pooler and PostgreSQL use 5432)."""

MIGRATION_LOCK_KEY = 0x6167656E7472756E
"""Advisory lock key held while migrating: the ASCII bytes of ``agentrun`` as a bigint."""

_UNAVAILABLE_PG = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, including a dropped connection
    asyncpg.exceptions.OperatorInterventionError,  # 57P01-03: shutdown, restart, not accepting yet
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
)

_RUN_COLUMNS = (
    "id, namespace, name, thread_id, status, attempt, reason, error, result, worker_instance, "
    "usage::text AS usage, metadata::text AS metadata, created_at, queued_at, started_at, finished_at, updated_at"
)
_MESSAGE_COLUMNS = "id, thread_id, run_id, role, content::text AS content, created_at, seq"


class PostgresStore(base.Store):
    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        migration_lock_timeout: float = 600.0,
        statement_cache_size: int | None = None,
    ) -> None:
        """``dsn``: a ``postgresql://`` URL as asyncpg understands it.

        ``min_size``/``max_size``: pool bounds; one connection is enough for an idle worker and
        ten cover a worker process with many concurrent runs. ``connect_timeout`` (seconds)
        bounds opening a connection, so an unreachable server fails fast as ``Unavailable``.
        ``command_timeout`` (seconds) bounds any one statement; no statement of this store
        should take more than milliseconds. ``migration_lock_timeout`` (seconds) is how long
        ``migrate`` waits for another process that is migrating. ``statement_cache_size``: asyncpg's
        prepared-statement cache per connection; ``None`` means 100 (asyncpg's default), or 0
        behind a transaction pooler (:func:`pooler_dsn`).
        """
        dsn, pooled = pooler_dsn(dsn)
        if statement_cache_size is None:
            statement_cache_size = 0 if pooled else 100
        self._statement_cache_size = statement_cache_size
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._migration_lock_timeout = migration_lock_timeout
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({log.redact_url(self._dsn)!r})"

    @property
    def url(self) -> str:
        """The URL without its password, for logs and messages."""
        return log.redact_url(self._dsn) or ""

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._pool is not None:
            return
        with self._translate("connect"):
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                statement_cache_size=self._statement_cache_size,
            )
        logger.info("store.connected", backend=self.backend, url=self.url)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=self._connect_timeout)
            pool.terminate()

    @contextlib.asynccontextmanager
    async def _conn(self, operation: str) -> collections.abc.AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise base.StoreError(f"{self!r} is not connected: call connect() first")
        with self._translate(operation):
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn

    @contextlib.contextmanager
    def _translate(self, operation: str) -> collections.abc.Iterator[None]:
        """Map driver errors onto the store's: ``Unavailable`` (retry) or ``StoreError``."""
        try:
            yield
        except base.StoreError:
            raise
        except _UNAVAILABLE_PG as exc:
            raise base.Unavailable(f"PostgreSQL at {self.url} unavailable during {operation}: {exc}") from exc
        except asyncpg.exceptions.InternalClientError as exc:
            # The server ended an idle pooled connection (restart, pg_terminate_backend) and its
            # error arrived before the socket closed: the protocol refuses the next operation.
            raise base.Unavailable(f"PostgreSQL connection broken during {operation}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            if "closed" in str(exc) or "closing" in str(exc):
                raise base.Unavailable(f"PostgreSQL connection lost during {operation}: {exc}") from exc
            raise base.StoreError(f"{operation} on PostgreSQL at {self.url} failed: {exc}") from exc
        except (TimeoutError, OSError) as exc:  # ConnectionRefusedError and TimeoutError are OSErrors
            raise base.Unavailable(
                f"cannot reach PostgreSQL at {self.url} during {operation}: {type(exc).__name__}: {exc}"
            ) from exc
        except asyncpg.PostgresError as exc:
            detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
            raise base.StoreError(
                f"{operation} on PostgreSQL at {self.url} failed: {type(exc).__name__}: {exc}{detail}"
            ) from exc

    # -- schema ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        migrations = base.load_migrations("postgres")
        applied: list[str] = []
        async with self._conn("migrate") as conn:
            while True:  # one transaction per file; the pending set is read again under each lock
                async with conn.transaction():
                    # A transaction-scoped lock, released by the COMMIT: it holds no state on the
                    # session, so it also works through a transaction pooler (pgbouncer), where
                    # a session lock could be taken and released on two different server connections.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY, timeout=self._migration_lock_timeout
                    )
                    await conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " version text PRIMARY KEY,"
                        " checksum text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
                    done = {r["version"]: r["checksum"] for r in rows}
                    pending = [m for m in migrations if m.version not in done]
                    if not pending:
                        for m in migrations:
                            if done[m.version] != m.checksum and m.version not in applied:
                                logger.warning("store.migration_changed", backend=self.backend, version=m.version)
                        return applied
                    migration = pending[0]
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                        migration.version,
                        migration.checksum,
                    )
                applied.append(migration.version)
                logger.info("store.migration_applied", backend=self.backend, version=migration.version)

    # -- threads and runs -------------------------------------------------------------------------

    async def ensure_thread(self, thread_id: str, *, namespace: str, metadata: dict[str, Any] | None = None) -> None:
        async with self._conn("ensure_thread") as conn:
            row = await conn.fetchrow(
                "INSERT INTO threads AS t (id, namespace, metadata) VALUES ($1, $2, $3::jsonb)"
                " ON CONFLICT (id) DO UPDATE SET metadata = t.metadata || EXCLUDED.metadata, updated_at = now()"
                "  WHERE t.namespace = EXCLUDED.namespace"
                "   AND t.metadata || EXCLUDED.metadata IS DISTINCT FROM t.metadata"
                " RETURNING id",
                thread_id,
                namespace,
                base.dump_json(metadata or {}),
            )
            if row is None:  # it existed and nothing changed, or it belongs to another namespace
                owner = await conn.fetchval("SELECT namespace FROM threads WHERE id = $1", thread_id)
                if owner is not None and owner != namespace:
                    raise base.StoreError(f"thread {thread_id!r} belongs to namespace {owner!r}, not {namespace!r}")

    async def upsert_run(self, run: base.RunRecord) -> None:
        status = base.check_phase(run.status)
        async with self._conn("upsert_run") as conn:
            await conn.execute(
                "INSERT INTO agent_runs AS r (id, namespace, name, thread_id, status, attempt, reason, error, result,"
                " worker_instance, usage, metadata, created_at, queued_at, started_at, finished_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb,"
                "  COALESCE($13, now()), $14, $15, $16, now())"
                " ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace, name = EXCLUDED.name,"
                "  thread_id = EXCLUDED.thread_id, metadata = r.metadata || EXCLUDED.metadata, updated_at = now()"
                "  WHERE (r.namespace, r.name, r.thread_id) IS DISTINCT FROM"
                "   (EXCLUDED.namespace, EXCLUDED.name, EXCLUDED.thread_id)"
                "   OR r.metadata || EXCLUDED.metadata IS DISTINCT FROM r.metadata",
                run.id,
                run.namespace,
                run.name,
                run.thread_id,
                status,
                run.attempt,
                run.reason,
                run.error,
                run.result,
                run.worker_instance,
                base.dump_json(run.usage or {}),
                base.dump_json(run.metadata or {}),
                base.utc(run.created_at),
                base.utc(run.queued_at),
                base.utc(run.started_at),
                base.utc(run.finished_at),
            )

    async def transition(
        self,
        run_id: str,
        status: str,
        *,
        attempt: int,
        reason: str | None = None,
        error: str | None = None,
        result: str | None = None,
        worker_instance: str | None = None,
        usage: dict[str, int] | None = None,
        started_at: datetime.datetime | None = None,
        finished_at: datetime.datetime | None = None,
    ) -> bool:
        status = base.check_phase(status)
        reassert = "(status = $2::text AND attempt = $3::integer)"
        async with self._conn("transition") as conn:
            row = await conn.fetchrow(
                "UPDATE agent_runs SET status = $2::text, attempt = $3::integer,"
                " reason = COALESCE($4, reason), error = COALESCE($5, error), result = COALESCE($6, result),"
                " worker_instance = COALESCE($7, worker_instance), usage = COALESCE($8::jsonb, usage),"
                f" started_at = CASE WHEN {reassert} THEN COALESCE(started_at, $9)"
                "  ELSE COALESCE($9, started_at) END,"
                f" finished_at = CASE WHEN {reassert} THEN COALESCE(finished_at, $10)"
                "  ELSE COALESCE($10, finished_at) END,"
                " updated_at = now()"
                f" WHERE id = $1 AND {base.transition_allowed_sql('$2::text', '$3::integer')}"
                " RETURNING id",
                run_id,
                status,
                attempt,
                reason,
                error,
                result,
                worker_instance,
                None if usage is None else base.dump_json(usage),
                base.utc(started_at),
                base.utc(finished_at),
            )
        return row is not None

    async def get_run(self, run_id: str) -> base.RunRecord | None:
        async with self._conn("get_run") as conn:
            row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id = $1", run_id)
        return None if row is None else _run(row)

    async def list_runs(
        self,
        *,
        namespace: str | None = None,
        thread_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[base.RunRecord]:
        if status is not None:
            status = base.check_phase(status)
        async with self._conn("list_runs") as conn:
            rows = await conn.fetch(
                f"SELECT {_RUN_COLUMNS} FROM agent_runs"
                " WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR thread_id = $2)"
                "  AND ($3::text IS NULL OR status = $3)"
                " ORDER BY created_at DESC, id DESC LIMIT $4",
                namespace,
                thread_id,
                status,
                limit,
            )
        return [_run(r) for r in rows]

    # -- messages ---------------------------------------------------------------------------------

    async def add_message(
        self,
        thread_id: str,
        role: str,
        content: Any,
        *,
        run_id: str | None = None,
        message_id: str | None = None,
    ) -> base.MessageRecord:
        message_id = message_id or base.new_message_id()
        content_json = base.dump_json(content)
        async with self._conn("add_message") as conn, conn.transaction():
            # The thread row lock serialises writers of one thread: seq is taken and stored back
            # before anyone else can read the counter.
            last_seq = await conn.fetchval("SELECT last_seq FROM threads WHERE id = $1 FOR UPDATE", thread_id)
            if last_seq is None:
                raise base.StoreError(f"thread {thread_id!r} does not exist: call ensure_thread() first")
            row = await conn.fetchrow(
                "INSERT INTO messages (id, thread_id, run_id, seq, role, content)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
                f" ON CONFLICT (id) DO NOTHING RETURNING {_MESSAGE_COLUMNS}",
                message_id,
                thread_id,
                run_id,
                last_seq + 1,
                role,
                content_json,
            )
            if row is None:  # the id was taken (possibly by a writer of another thread that just committed)
                row = await conn.fetchrow(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1", message_id)
                if row is None:
                    raise base.StoreError(f"message {message_id!r} conflicted but is gone: retry")
                if row["thread_id"] != thread_id:
                    raise base.StoreError(f"message id {message_id!r} already belongs to thread {row['thread_id']!r}")
                return _message(row)
            await conn.execute(
                "UPDATE threads SET last_seq = $2, updated_at = now() WHERE id = $1", thread_id, last_seq + 1
            )
        return _message(row)

    async def list_messages(self, thread_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[base.MessageRecord]:
        async with self._conn("list_messages") as conn:
            rows = await conn.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                thread_id,
                after_seq,
                limit,
            )
        return [_message(r) for r in rows]


def pooler_dsn(dsn: str) -> tuple[str, bool]:
    """``dsn`` for asyncpg, and whether it goes through a transaction pooler.

    A pooler in transaction mode (pgbouncer, Supabase's Supavisor) hands each transaction to
    any server connection, so a prepared statement cached on one is unknown on the next. It is
    recognised by ``?pgbouncer=true`` (the convention of Prisma and Supabase's connection
    strings, removed here: asyncpg would send it to the server as a setting) or, without that
    parameter, by port 6543 (Supabase's transaction pooler). ``pgbouncer=false`` says no.
    """
    try:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        port = parts.port
    except ValueError:  # several hosts, or something asyncpg parses better: leave it alone
        return dsn, False
    flags = [value.lower() for key, value in query if key == "pgbouncer"]
    if not flags:
        return dsn, port == SUPABASE_POOLER_PORT
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "pgbouncer"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), flags[-1] in ("true", "1", "yes", "on")


def _run(row: asyncpg.Record) -> base.RunRecord:
    return base.RunRecord(
        id=row["id"],
        namespace=row["namespace"],
        name=row["name"],
        thread_id=row["thread_id"],
        status=row["status"],
        attempt=row["attempt"],
        reason=row["reason"],
        error=row["error"],
        result=row["result"],
        worker_instance=row["worker_instance"],
        usage=base.load_json(row["usage"], {}),
        metadata=base.load_json(row["metadata"], {}),
        created_at=base.utc(row["created_at"]),
        queued_at=base.utc(row["queued_at"]),
        started_at=base.utc(row["started_at"]),
        finished_at=base.utc(row["finished_at"]),
        updated_at=base.utc(row["updated_at"]),
    )


def _message(row: asyncpg.Record) -> base.MessageRecord:
    created_at = base.utc(row["created_at"])
    assert created_at is not None
    return base.MessageRecord(
        id=row["id"],
        thread_id=row["thread_id"],
        run_id=row["run_id"],
        role=row["role"],
        content=base.load_json(row["content"]),
        created_at=created_at,
        seq=row["seq"],
    )
