"""The SQLite backend of the store (aiosqlite): the embedded default for local use.

Built by :func:`agentrun.store.open_store` for ``sqlite://`` URLs and when no database URL is
set; ``agentrun dev`` and a local worker use it, ``agentrun migrate`` applies its schema.

Several processes may share one file (``agentrun dev`` plus a CLI, or two workers):

- WAL journal, so readers never block the writer; a busy timeout, so a writer waits for
  another instead of failing at once.
- Every write that reads first (migrations, upsert, ``add_message``) runs in
  ``BEGIN IMMEDIATE``: the write lock is taken before the read, so two processes can neither
  deadlock on a lock upgrade nor hand out the same ``seq``.
- A transition is one ``UPDATE ... WHERE <phase rule>`` statement, atomic by itself.

Within one process a store has a single connection, and an asyncio lock keeps one operation
(and so one transaction) on it at a time. Timestamps are ISO 8601 text in UTC with
microseconds, so they sort correctly as text; JSON is stored as text.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import datetime
import pathlib
import sqlite3
from typing import Any

import aiosqlite
import structlog

from agentrun.store import base

logger = structlog.get_logger(__name__)

MEMORY = ":memory:"

# Primary result codes that mean "busy or unreachable, try again": BUSY, LOCKED, IOERR, CANTOPEN.
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 14})

_RUN_COLUMNS = (
    "id, namespace, name, thread_id, status, attempt, reason, error, result, worker_instance, usage, metadata,"
    " created_at, queued_at, started_at, finished_at, updated_at"
)
_MESSAGE_COLUMNS = "id, thread_id, run_id, role, content, created_at, seq"


class SqliteStore(base.Store):
    backend = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        """``path``: the database file (parent folders are created) or ``:memory:``.

        ``busy_timeout`` (seconds): how long a writer waits for another process's write
        transaction. Ours last milliseconds; 30 s rides out a slow disk without hanging forever.
        """
        self.path = path
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._db is not None:
            return
        with self._translate("connect"):
            if self.path != MEMORY:
                pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None, timeout=self._busy_timeout)
            try:
                db.row_factory = aiosqlite.Row
                await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
                await db.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                await db.close()
                raise
        self._db = db
        logger.info("store.connected", backend=self.backend, path=self.path)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()

    @contextlib.contextmanager
    def _translate(self, operation: str) -> collections.abc.Iterator[None]:
        """Map driver errors onto the store's: ``Unavailable`` (retry) or ``StoreError``."""
        try:
            yield
        except base.StoreError:
            raise
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in _UNAVAILABLE_CODES:
                raise base.Unavailable(f"SQLite database {self.path} unavailable during {operation}: {exc}") from exc
            raise base.StoreError(
                f"{operation} on SQLite database {self.path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        except OSError as exc:
            raise base.Unavailable(f"SQLite database {self.path} unavailable during {operation}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _use(self, operation: str) -> collections.abc.AsyncIterator[aiosqlite.Connection]:
        """The connection, for one operation at a time in this process."""
        if self._db is None:
            raise base.StoreError(f"{self!r} is not connected: call connect() first")
        async with self._lock:
            with self._translate(operation):
                if self._db.in_transaction:  # a cancelled operation left its transaction open
                    await self._db.rollback()
                yield self._db

    @contextlib.asynccontextmanager
    async def _write(self, operation: str) -> collections.abc.AsyncIterator[aiosqlite.Connection]:
        """The connection inside ``BEGIN IMMEDIATE``: committed on success, rolled back on error."""
        async with self._use(operation) as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.rollback()
                raise
            await db.commit()

    # -- schema ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        migrations = base.load_migrations("sqlite")
        applied: list[str] = []
        while True:  # one transaction per file; the pending set is read again under each write lock
            async with self._write("migrate") as db:
                await db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                async with db.execute("SELECT version, checksum FROM schema_migrations") as cur:
                    done = {r["version"]: r["checksum"] for r in await cur.fetchall()}
                pending = [m for m in migrations if m.version not in done]
                if not pending:
                    for m in migrations:
                        if done[m.version] != m.checksum and m.version not in applied:
                            logger.warning("store.migration_changed", backend=self.backend, version=m.version)
                    return applied
                migration = pending[0]
                for statement in split_statements(migration.sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, checksum, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.checksum, _ts(base.utcnow())),
                )
            applied.append(migration.version)
            logger.info("store.migration_applied", backend=self.backend, version=migration.version)

    # -- threads and runs -------------------------------------------------------------------------

    async def ensure_thread(self, thread_id: str, *, namespace: str, metadata: dict[str, Any] | None = None) -> None:
        now = _ts(base.utcnow())
        async with self._write("ensure_thread") as db:
            async with db.execute("SELECT namespace, metadata FROM threads WHERE id = ?", (thread_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                await db.execute(
                    "INSERT INTO threads (id, namespace, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (thread_id, namespace, base.dump_json(metadata or {}), now, now),
                )
                return
            if row["namespace"] != namespace:
                owner = row["namespace"]
                raise base.StoreError(f"thread {thread_id!r} belongs to namespace {owner!r}, not {namespace!r}")
            current = base.load_json(row["metadata"], {})
            merged = base.merge_metadata(current, metadata)
            if merged != current:
                await db.execute(
                    "UPDATE threads SET metadata = ?, updated_at = ? WHERE id = ?",
                    (base.dump_json(merged), now, thread_id),
                )

    async def upsert_run(self, run: base.RunRecord) -> None:
        status = base.check_phase(run.status)
        now = base.utcnow()
        async with self._write("upsert_run") as db:
            async with db.execute(
                "SELECT namespace, name, thread_id, metadata FROM agent_runs WHERE id = ?", (run.id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                await db.execute(
                    f"INSERT INTO agent_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                    (
                        run.id, run.namespace, run.name, run.thread_id, status, run.attempt, run.reason, run.error,
                        run.result, run.worker_instance, base.dump_json(run.usage or {}),
                        base.dump_json(run.metadata or {}), _ts(run.created_at or now), _ts(run.queued_at),
                        _ts(run.started_at), _ts(run.finished_at), _ts(now),
                    ),
                )
                return
            current = base.load_json(row["metadata"], {})
            merged = base.merge_metadata(current, run.metadata)
            identity = (row["namespace"], row["name"], row["thread_id"])
            if identity != (run.namespace, run.name, run.thread_id) or merged != current:
                await db.execute(
                    "UPDATE agent_runs SET namespace = ?, name = ?, thread_id = ?, metadata = ?, updated_at = ?"
                    " WHERE id = ?",
                    (run.namespace, run.name, run.thread_id, base.dump_json(merged), _ts(now), run.id),
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
        reassert = "(status = :status AND attempt = :attempt)"
        params = {
            "id": run_id,
            "status": status,
            "attempt": attempt,
            "reason": reason,
            "error": error,
            "result": result,
            "worker_instance": worker_instance,
            "usage": None if usage is None else base.dump_json(usage),
            "started_at": _ts(started_at),
            "finished_at": _ts(finished_at),
            "now": _ts(base.utcnow()),
        }
        async with self._use("transition") as db:
            async with db.execute(
                "UPDATE agent_runs SET status = :status, attempt = :attempt,"
                " reason = COALESCE(:reason, reason), error = COALESCE(:error, error),"
                " result = COALESCE(:result, result), worker_instance = COALESCE(:worker_instance, worker_instance),"
                " usage = COALESCE(:usage, usage),"
                f" started_at = CASE WHEN {reassert} THEN COALESCE(started_at, :started_at)"
                "  ELSE COALESCE(:started_at, started_at) END,"
                f" finished_at = CASE WHEN {reassert} THEN COALESCE(finished_at, :finished_at)"
                "  ELSE COALESCE(:finished_at, finished_at) END,"
                " updated_at = :now"
                f" WHERE id = :id AND {base.transition_allowed_sql(':status', ':attempt')}",
                params,
            ) as cur:
                return cur.rowcount == 1

    async def get_run(self, run_id: str) -> base.RunRecord | None:
        async with self._use("get_run") as db:
            async with db.execute(f"SELECT {_RUN_COLUMNS} FROM agent_runs WHERE id = ?", (run_id,)) as cur:
                row = await cur.fetchone()
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
        async with self._use("list_runs") as db:
            async with db.execute(
                f"SELECT {_RUN_COLUMNS} FROM agent_runs"
                " WHERE (:namespace IS NULL OR namespace = :namespace)"
                "  AND (:thread_id IS NULL OR thread_id = :thread_id)"
                "  AND (:status IS NULL OR status = :status)"
                " ORDER BY created_at DESC, id DESC LIMIT :limit",
                {"namespace": namespace, "thread_id": thread_id, "status": status, "limit": limit},
            ) as cur:
                rows = await cur.fetchall()
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
        async with self._write("add_message") as db:
            async with db.execute("SELECT last_seq FROM threads WHERE id = ?", (thread_id,)) as cur:
                thread = await cur.fetchone()
            if thread is None:
                raise base.StoreError(f"thread {thread_id!r} does not exist: call ensure_thread() first")
            async with db.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)) as cur:
                existing = await cur.fetchone()
            if existing is not None:
                if existing["thread_id"] != thread_id:
                    owner = existing["thread_id"]
                    raise base.StoreError(f"message id {message_id!r} already belongs to thread {owner!r}")
                return _message(existing)
            seq = int(thread["last_seq"]) + 1
            now = _ts(base.utcnow())
            await db.execute(
                "INSERT INTO messages (id, thread_id, run_id, seq, role, content, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, thread_id, run_id, seq, role, content_json, now),
            )
            await db.execute("UPDATE threads SET last_seq = ?, updated_at = ? WHERE id = ?", (seq, now, thread_id))
        created_at = _time(now)
        assert created_at is not None
        return base.MessageRecord(
            id=message_id, thread_id=thread_id, run_id=run_id, role=role,
            content=base.load_json(content_json), created_at=created_at, seq=seq,
        )

    async def list_messages(self, thread_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[base.MessageRecord]:
        async with self._use("list_messages") as db:
            async with db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE thread_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (thread_id, after_seq, limit),
            ) as cur:
                rows = await cur.fetchall()
        return [_message(r) for r in rows]


def split_statements(script: str) -> list[str]:
    """The SQL statements of a script, split where :func:`sqlite3.complete_statement` says one ends.

    ``executescript`` would commit the open transaction first; executing statement by
    statement keeps a whole migration inside ``BEGIN IMMEDIATE``.
    """
    statements: list[str] = []
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            statement = _strip_comments(buffer).strip()
            if statement != ";":
                statements.append(buffer.strip())
            buffer = ""
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def _ts(value: datetime.datetime | None) -> str | None:
    utc = base.utc(value)
    return None if utc is None else utc.isoformat(timespec="microseconds")


def _time(value: str | None) -> datetime.datetime | None:
    return None if value is None else base.utc(datetime.datetime.fromisoformat(value))


def _run(row: sqlite3.Row) -> base.RunRecord:
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
        created_at=_time(row["created_at"]),
        queued_at=_time(row["queued_at"]),
        started_at=_time(row["started_at"]),
        finished_at=_time(row["finished_at"]),
        updated_at=_time(row["updated_at"]),
    )


def _message(row: sqlite3.Row) -> base.MessageRecord:
    created_at = _time(row["created_at"])
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
