"""The store contract: records, errors and the abstract :class:`Store` every backend implements.

The worker records runs, threads and messages through a :class:`Store`; the CLI's
``agentrun migrate`` applies the schema through :func:`agentrun.store.migrate_url`. The
backends (:mod:`agentrun.store.postgres`, :mod:`agentrun.store.sqlite`) share what is
written here: the SQL form of the phase rule (generated from :mod:`agentrun.phases`, so the
database and the Python rule cannot drift apart), JSON and time conversion, and the loading
of the migration files shipped inside this package.

Semantics every backend keeps:

- ``upsert_run`` inserts a run, or updates only its identity (namespace, name, thread) and
  merges its metadata (top-level keys of the new record win; an empty dict changes nothing).
  Status, attempt and the lifecycle timestamps only ever change through ``transition``.
- ``transition`` is one compare-and-set: it applies only when
  :func:`agentrun.phases.may_transition` allows it, decided by the database in the ``WHERE``
  clause of a single ``UPDATE``. ``None`` arguments leave a column as it is. A re-assert (same
  phase, same attempt) never moves a timestamp that is already recorded.
- ``add_message`` gives each message of a thread the next ``seq`` under a per-thread lock
  (a counter on the thread row), and is idempotent on ``message_id``.
- Timestamps are timezone-aware UTC; naive datetimes given to the store are taken as UTC.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import hashlib
import importlib.resources
import json
import types
import uuid
from typing import Any, Self

from agentrun import phases


class StoreError(Exception):
    """A store operation failed in a way a retry will not fix (constraint, bad input, bug)."""


class Unavailable(StoreError):
    """The database could not be reached or dropped the connection: the caller may retry."""

    reason = "DatabaseUnavailable"
    """What a run that fails on it says in ``status.reason`` (after the retries gave up)."""


@dataclasses.dataclass
class RunRecord:
    """One AgentRun as the database records it; ``id`` is the resource's ``metadata.uid``."""

    id: str
    namespace: str
    name: str
    thread_id: str
    status: str
    """A :class:`agentrun.phases.Phase` value (``"Queued"``, ``"Running"``, ...)."""
    attempt: int = 1
    reason: str | None = None
    error: str | None = None
    """Human-readable message when the run failed."""
    result: str | None = None
    """The final answer, truncated by the caller."""
    worker_instance: str | None = None
    usage: dict[str, int] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    created_at: datetime.datetime | None = None
    queued_at: datetime.datetime | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None


@dataclasses.dataclass
class MessageRecord:
    """One message of a conversation thread; ``seq`` orders it within the thread."""

    id: str
    thread_id: str
    run_id: str | None
    role: str
    content: Any
    created_at: datetime.datetime
    seq: int


class Store(abc.ABC):
    """Runs, threads and messages in a database. Use as ``async with store: ...``."""

    backend: str = "abstract"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection (pool). Raises :class:`Unavailable` if the database is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection (pool); closing twice is harmless."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in a transaction; return the versions applied.

        Safe to run from several processes at once: only one applies, the others wait and
        then find nothing pending.
        """

    @abc.abstractmethod
    async def ensure_thread(self, thread_id: str, *, namespace: str, metadata: dict[str, Any] | None = None) -> None:
        """Create the thread if absent (idempotent); given metadata is merged into an existing one.

        Raises :class:`StoreError` if the thread exists in another namespace: threads never
        cross namespaces.
        """

    @abc.abstractmethod
    async def upsert_run(self, run: RunRecord) -> None:
        """Insert the run, or update its identity fields and merge its metadata.

        Never changes status, attempt, result fields or timestamps of an existing run.
        """

    @abc.abstractmethod
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
        """Move the run to ``status`` at ``attempt`` if the phase rule allows it; whether it applied.

        One atomic compare-and-set. ``False`` also when the run does not exist.
        """

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        namespace: str | None = None,
        thread_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first."""

    @abc.abstractmethod
    async def add_message(
        self,
        thread_id: str,
        role: str,
        content: Any,
        *,
        run_id: str | None = None,
        message_id: str | None = None,
    ) -> MessageRecord:
        """Append a message to an existing thread with the next ``seq``.

        Idempotent on ``message_id``: a second call returns the stored message unchanged.
        Raises :class:`StoreError` if the thread does not exist (call :meth:`ensure_thread`
        first) or the id is taken by a message of another thread.
        """

    @abc.abstractmethod
    async def list_messages(self, thread_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[MessageRecord]:
        """Messages of the thread with ``seq > after_seq``, in ``seq`` order."""


# -- shared by the backends --------------------------------------------------------------------

_TERMINAL_SQL = ", ".join(sorted(f"'{p.value}'" for p in phases.TERMINAL))
PHASES_SQL = ", ".join(f"'{p.value}'" for p in phases.Phase)
"""The phases as a SQL list, for the ``CHECK`` constraint on ``agent_runs.status``."""


def rank_sql(expr: str) -> str:
    """A SQL expression giving :func:`agentrun.phases.rank` of ``expr`` (NULL for an unknown phase)."""
    whens = " ".join(f"WHEN '{p.value}' THEN {phases.rank(p)}" for p in phases.Phase)
    return f"(CASE {expr} {whens} END)"


def transition_allowed_sql(new_status: str, new_attempt: str) -> str:
    """The ``WHERE`` condition of a transition: :func:`agentrun.phases.may_transition` in SQL.

    ``new_status`` and ``new_attempt`` are the backend's parameter placeholders; the current
    values are the ``status`` and ``attempt`` columns of ``agent_runs``.
    """
    return (
        f"(status NOT IN ({_TERMINAL_SQL}) AND ("
        f"{new_attempt} > attempt"
        f" OR ({new_attempt} = attempt AND (status = {new_status}"
        f" OR {rank_sql(new_status)} > {rank_sql('status')}))))"
    )


def check_phase(status: str) -> str:
    """``status`` if it names a phase; ``ValueError`` naming the valid ones otherwise."""
    try:
        return phases.Phase(status).value
    except ValueError:
        known = ", ".join(p.value for p in phases.Phase)
        raise ValueError(f"unknown phase {status!r}; expected one of {known}") from None


def dump_json(value: Any) -> str:
    """JSON text for a jsonb/TEXT column: compact, unicode kept, NaN refused."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def load_json(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def utc(value: datetime.datetime | None) -> datetime.datetime | None:
    """The datetime in UTC; a naive one is taken as UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


def new_message_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def merge_metadata(current: dict[str, Any], new: dict[str, Any] | None) -> dict[str, Any]:
    """Shallow merge: top-level keys of ``new`` win (PostgreSQL's ``jsonb || jsonb``)."""
    return {**current, **(new or {})}


@dataclasses.dataclass(frozen=True)
class Migration:
    """One SQL file shipped in ``agentrun/store/migrations/<dialect>/``."""

    version: str
    """The file name without ``.sql`` (``0001_init``); files apply in this order."""
    sql: str
    checksum: str
    """SHA-256 of the file, recorded to notice a migration edited after it was applied."""


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of a dialect (``postgres`` or ``sqlite``), in version order."""
    folder = importlib.resources.files("agentrun.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            sql = entry.read_text(encoding="utf-8")
            found.append(
                Migration(
                    version=entry.name.removesuffix(".sql"),
                    sql=sql,
                    checksum=hashlib.sha256(sql.encode("utf-8")).hexdigest(),
                )
            )
    if not found:
        raise StoreError(f"no migrations found for {dialect}: the package is incomplete")
    return sorted(found, key=lambda m: m.version)
