"""The Supabase backend of the store: the same contract over Supabase's REST API (PostgREST).

Chosen by :func:`agentrun.store.from_settings` when ``SUPABASE_URL`` and a service key
(``AGENTRUN_SUPABASE_KEY`` or ``SUPABASE_SERVICE_ROLE_KEY``) are set and no
``AGENTRUN_DATABASE_URL`` is. It talks through the official ``supabase`` client (its async
client, ``postgrest`` underneath), so a deployment needs only the project URL and key, no
database connection string. Install it with ``pip install 'agentrun[supabase]'``.

How each operation maps onto PostgREST, and why:

- **Reads** are table requests: ``GET /rest/v1/agent_runs?id=eq.…``, ``…?order=created_at.desc``,
  ``GET /rest/v1/messages?thread_id=eq.…&seq=gt.…&order=seq.asc&limit=…``.
- **Writes** are calls of the SQL functions of migration ``0002_rest_functions``
  (``POST /rest/v1/rpc/agentrun_transition`` …). PostgREST runs each request in its own
  transaction, so a write that must read and write atomically cannot be several requests.
  The phase rule in particular stays one compare-and-set: ``agentrun_transition`` is a single
  ``UPDATE … WHERE <phase rule>``, generated from :mod:`agentrun.phases` like the PostgreSQL
  backend's. A filtered ``PATCH`` could express the rule itself, but not "keep a timestamp
  already recorded on a re-assert" (``COALESCE(started_at, …)``), nor the jsonb merge of
  ``upsert_run`` or the per-thread ``seq`` of ``add_message``; one function per write keeps
  each of them one statement (or one transaction) in the database.
- **Migrations** cannot run over REST (PostgREST runs no DDL). :meth:`SupabaseStore.migrate`
  reads ``schema_migrations`` and fails with what to run when a version is missing: apply the
  schema once with ``agentrun migrate --database-url <the project's direct connection string>``.

Errors: transport failures, HTTP 5xx/429, PostgREST's "cannot reach the database" codes
(``PGRST000``–``PGRST003``) and the retryable SQLSTATEs (connection, resources, serialization)
become :class:`agentrun.store.base.Unavailable`; everything else (constraints, bad input, a
refused key) is a :class:`agentrun.store.base.StoreError` with PostgREST's code and message.
The key is a secret: it is only ever in the request headers, never in ``repr``, a log line
or an error (errors name the project URL only).
"""

from __future__ import annotations

import datetime
import urllib.parse
from typing import Any, NoReturn

import httpx
import structlog

from agentrun.store import base

logger = structlog.get_logger(__name__)

_RUN_COLUMNS = (
    "id,namespace,name,thread_id,status,attempt,reason,error,result,worker_instance,usage,metadata,"
    "created_at,queued_at,started_at,finished_at,updated_at"
)
_MESSAGE_COLUMNS = "id,thread_id,run_id,role,content,created_at,seq"

_UNAVAILABLE_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003", "40001", "40P01", "57014"})
"""PostgREST: cannot connect, pool exhausted, schema cache not loaded, pool timeout;
SQLSTATE: serialization failure, deadlock, statement cancelled (timeout)."""
_UNAVAILABLE_CLASSES = ("08", "53", "57P", "58")
"""SQLSTATE classes: connection exception, insufficient resources, server shutting down, system error."""


class SupabaseStore(base.Store):
    backend = "supabase"

    def __init__(self, url: str, key: str, *, timeout: float = 30.0, schema: str = "public") -> None:
        """``url``: the project URL (``https://<ref>.supabase.co``); ``key``: its service-role
        (secret) key, which bypasses row level security as the worker must.

        ``timeout`` (seconds) bounds one HTTP request, so a hung gateway becomes
        ``Unavailable`` instead of a stuck run; every request of this store is one small
        statement. ``schema``: the exposed schema holding agentrun's tables.
        """
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"SUPABASE_URL must be the project's http(s):// URL, got {_redact(url)!r}")
        if not key:
            raise ValueError(
                "the Supabase service key is empty: set AGENTRUN_SUPABASE_KEY or SUPABASE_SERVICE_ROLE_KEY"
            )
        self._url = url.rstrip("/")
        self._key = key
        self._timeout = timeout
        self._schema = schema
        self._client: Any = None
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"SupabaseStore({self.url!r})"

    @property
    def url(self) -> str:
        """The project URL without credentials, for logs and messages."""
        return _redact(self._url)

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        try:
            import supabase
            from supabase.lib.client_options import AsyncClientOptions
        except ImportError as exc:  # an optional extra
            raise base.StoreError(
                "the Supabase backend needs the supabase client: pip install 'agentrun[supabase]'"
            ) from exc
        http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)
        options = AsyncClientOptions(
            schema=self._schema,
            httpx_client=http,
            # One retry policy for every backend (agentrun.store.retrying), not a second one
            # underneath that would multiply the waits.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            self._client = await supabase.acreate_client(self._url, self._key, options=options)
        except Exception as exc:
            await http.aclose()
            raise base.StoreError(f"cannot set up the Supabase client for {self.url}: {type(exc).__name__}") from None
        self._http = http
        logger.info("store.connected", backend=self.backend, url=self.url)

    async def close(self) -> None:
        self._client = None
        http, self._http = self._http, None
        if http is not None:  # the one HTTP client every part of the supabase client shares
            try:
                await http.aclose()
            except Exception as exc:  # closing must not fail a shutdown
                logger.debug("store.close_failed", backend=self.backend, error=type(exc).__name__)

    def _rest(self) -> Any:
        if self._client is None:
            raise base.StoreError(f"{self!r} is not connected: call connect() first")
        return self._client

    async def _execute(self, operation: str, request: Any) -> Any:
        """Send one built request; its JSON body, or the store's error for what went wrong."""
        from postgrest.exceptions import APIError

        try:
            response = await request.execute()
        except APIError as exc:
            self._raise(operation, exc.code, exc.message, exc.details, exc.hint)
        except httpx.TransportError as exc:  # refused, reset, timed out, protocol error
            raise base.Unavailable(
                f"cannot reach Supabase at {self.url} during {operation}: {type(exc).__name__}"
            ) from None
        return response.data

    def _raise(self, operation: str, code: str | None, message: str | None, details: Any, hint: str | None) -> NoReturn:
        code = code or ""
        text = message or "no message"
        if details:
            text += f" ({details})"
        if code in ("401", "403", "PGRST301", "PGRST302", "42501") or "API key" in text:
            raise base.StoreError(
                f"Supabase at {self.url} refused the key during {operation}: {text}; check AGENTRUN_SUPABASE_KEY "
                "(or SUPABASE_SERVICE_ROLE_KEY) holds the project's service-role key"
            )
        if code in ("PGRST202", "PGRST205", "42883", "42P01"):
            raise base.StoreError(
                f"{operation} on Supabase at {self.url} failed: [{code}] {text}: the schema is missing or old; "
                "apply it with `agentrun migrate --database-url <the project's direct connection string>`"
            )
        retryable = code in _UNAVAILABLE_CODES or code.startswith(_UNAVAILABLE_CLASSES)
        retryable = retryable or (code.isdigit() and (code.startswith("5") or code == "429"))
        if retryable:
            raise base.Unavailable(f"Supabase at {self.url} unavailable during {operation}: [{code}] {text}")
        # P0001 is raised by agentrun's own functions with the same message the other backends give.
        prefix = "" if code == "P0001" else f"[{code}] "
        raise base.StoreError(f"{operation} on Supabase at {self.url} failed: {prefix}{text}")

    # -- schema ---------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Check the schema is there; the REST API cannot apply it (see the module docstring)."""
        shipped = base.load_migrations("postgres")
        try:
            rows = await self._execute("migrate", self._rest().table("schema_migrations").select("version,checksum"))
        except base.StoreError as exc:
            if isinstance(exc, base.Unavailable):
                raise
            raise base.StoreError(
                f"the agentrun schema is not in the Supabase project at {self.url}: apply it once with "
                "`agentrun migrate --database-url <the project's direct connection string>` ({exc})"
            ) from None
        done = {r["version"]: r["checksum"] for r in rows}
        missing = [m.version for m in shipped if m.version not in done]
        if missing:
            raise base.StoreError(
                f"the Supabase project at {self.url} lacks schema versions {', '.join(missing)}: apply them with "
                "`agentrun migrate --database-url <the project's direct connection string>`"
            )
        for m in shipped:
            if done[m.version] != m.checksum:
                logger.warning("store.migration_changed", backend=self.backend, version=m.version)
        return []

    # -- threads and runs -------------------------------------------------------------------------

    async def ensure_thread(self, thread_id: str, *, namespace: str, metadata: dict[str, Any] | None = None) -> None:
        await self._execute("ensure_thread", self._rest().rpc(
            "agentrun_ensure_thread", {"p_id": thread_id, "p_namespace": namespace, "p_metadata": metadata or {}},
        ))

    async def upsert_run(self, run: base.RunRecord) -> None:
        status = base.check_phase(run.status)
        await self._execute("upsert_run", self._rest().rpc("agentrun_upsert_run", {
            "p_id": run.id, "p_namespace": run.namespace, "p_name": run.name, "p_thread_id": run.thread_id,
            "p_status": status, "p_attempt": run.attempt, "p_reason": run.reason, "p_error": run.error,
            "p_result": run.result, "p_worker_instance": run.worker_instance,
            "p_usage": run.usage or {}, "p_metadata": run.metadata or {},
            "p_created_at": _time(run.created_at), "p_queued_at": _time(run.queued_at),
            "p_started_at": _time(run.started_at), "p_finished_at": _time(run.finished_at),
        }))

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
        applied = await self._execute("transition", self._rest().rpc("agentrun_transition", {
            "p_id": run_id, "p_status": status, "p_attempt": attempt, "p_reason": reason, "p_error": error,
            "p_result": result, "p_worker_instance": worker_instance, "p_usage": usage,
            "p_started_at": _time(started_at), "p_finished_at": _time(finished_at),
        }))
        if not isinstance(applied, bool):
            raise base.StoreError(f"agentrun_transition on Supabase at {self.url} answered {applied!r}, not a boolean")
        return applied

    async def get_run(self, run_id: str) -> base.RunRecord | None:
        rows = await self._execute(
            "get_run", self._rest().table("agent_runs").select(_RUN_COLUMNS).eq("id", run_id).limit(1)
        )
        return _run(rows[0]) if rows else None

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
        query = self._rest().table("agent_runs").select(_RUN_COLUMNS)
        for column, value in (("namespace", namespace), ("thread_id", thread_id), ("status", status)):
            if value is not None:
                query = query.eq(column, value)
        query = query.order("created_at", desc=True).order("id", desc=True).limit(limit)
        return [_run(r) for r in await self._execute("list_runs", query)]

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
        row = await self._execute("add_message", self._rest().rpc("agentrun_add_message", {
            "p_thread_id": thread_id, "p_role": role, "p_content": base.dump_json(content),
            "p_run_id": run_id, "p_message_id": message_id or base.new_message_id(),
        }))
        if not isinstance(row, dict):
            raise base.StoreError(f"agentrun_add_message on Supabase at {self.url} answered {row!r}, not a row")
        return _message(row)

    async def list_messages(self, thread_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[base.MessageRecord]:
        query = (
            self._rest().table("messages").select(_MESSAGE_COLUMNS)
            .eq("thread_id", thread_id).gt("seq", after_seq).order("seq").limit(limit)
        )
        return [_message(r) for r in await self._execute("list_messages", query)]


def _redact(url: str) -> str:
    """``url`` without user info or query (where a key could hide), for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def _time(value: datetime.datetime | None) -> str | None:
    utc = base.utc(value)
    return None if utc is None else utc.isoformat(timespec="microseconds")


def _parse_time(value: str | None) -> datetime.datetime | None:
    """A timestamptz as PostgREST writes it (``2030-01-02T03:04:05.123456+00:00``), in UTC."""
    if value is None:
        return None
    return base.utc(datetime.datetime.fromisoformat(value))


def _run(row: dict[str, Any]) -> base.RunRecord:
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
        usage=row["usage"] or {},
        metadata=row["metadata"] or {},
        created_at=_parse_time(row["created_at"]),
        queued_at=_parse_time(row["queued_at"]),
        started_at=_parse_time(row["started_at"]),
        finished_at=_parse_time(row["finished_at"]),
        updated_at=_parse_time(row["updated_at"]),
    )


def _message(row: dict[str, Any]) -> base.MessageRecord:
    created_at = _parse_time(row["created_at"])
    assert created_at is not None
    return base.MessageRecord(
        id=row["id"],
        thread_id=row["thread_id"],
        run_id=row["run_id"],
        role=row["role"],
        content=row["content"],
        created_at=created_at,
        seq=row["seq"],
    )
