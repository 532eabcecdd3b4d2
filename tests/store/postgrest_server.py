"""A PostgREST stand-in for the Supabase backend's tests, on the real PostgreSQL database.

Supabase's REST API is PostgREST behind an API gateway; neither can run on the test machines.
This server implements exactly the requests the ``supabase`` client makes for
:class:`agentrun.store.supabase.SupabaseStore`, and executes them as SQL on the real
PostgreSQL test database through asyncpg, so constraints, locks, jsonb and timestamps are
PostgreSQL's own:

- ``GET /rest/v1/<table>`` with ``select=`` (columns), filters ``<column>=<op>.<value>``
  (``eq neq gt gte lt lte is``), ``order=<column>.<asc|desc>,…`` and ``limit=``: rows as
  PostgREST renders them (``json_agg`` of the row, so timestamps and jsonb come out as
  PostgreSQL writes them); a table or column that does not exist is PostgREST's error.
- ``POST /rest/v1/rpc/<function>`` with a JSON object of arguments: the function is found by
  name and argument names, as PostgREST does, and called with the arguments bound through
  ``json_to_record`` (a JSON ``null`` becomes SQL ``NULL``, as in PostgREST); the result is
  ``to_jsonb`` of the return value, ``204`` for ``void``.
- Errors in PostgREST's shape ``{"code", "message", "details", "hint"}`` and status
  (``23505`` → 409, ``P0001`` → 400, ``PGRST202``/``PGRST205`` → 404, an unreachable
  database → 503 ``PGRST000``), and the gateway's ``401`` for a missing or wrong ``apikey``.

What it deliberately leaves out: roles and JWT claims (every request runs as the database
owner, which bypasses row level security like the service-role key does), embedding,
``Prefer`` options and the insert/update/delete table verbs, which the store never sends;
anything else is answered ``405``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

# PostgREST's mapping of SQLSTATE to HTTP status (docs: "Errors → SQLSTATE"), the part we can meet.
_STATUS_BY_CODE = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404, "42P01": 404,
                   "42501": 403, "40001": 500, "40P01": 500}
_STATUS_BY_CLASS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
                    "39": 500, "3B": 500, "40": 500, "53": 503, "54": 413, "55": 500, "57": 500, "58": 500,
                    "F0": 500, "HV": 500, "P0": 500, "XX": 500}


def http_status(sqlstate: str) -> int:
    return _STATUS_BY_CODE.get(sqlstate) or _STATUS_BY_CLASS.get(sqlstate[:2]) or 400


def error(status: int, code: str | None, message: str, details: Any = None, hint: Any = None) -> Response:
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def gateway_error(message: str, hint: str) -> Response:
    """The API gateway's refusal: no PostgREST code, only message and hint."""
    return Response(json.dumps({"message": message, "hint": hint}), status_code=401, media_type="application/json")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class PostgrestServer:
    """The server on a free port of 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, dsn: str, key: str, *, schema: str = "public") -> None:
        self.dsn = dsn
        self.key = key
        self.schema = schema
        self.port = 0
        self.requests: list[tuple[str, str]] = []
        """``(method, path?query)`` of every request, for tests that check what the client sent."""
        self.fail_next: list[Callable[[Request], Response | None]] = []
        """Hooks a test may push to answer the next requests itself (e.g. a 503 from the gateway)."""
        self._pool: asyncpg.Pool | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> PostgrestServer:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/rest/v1/rpc/{function}", self._rpc, methods=["POST"]),
                Route("/rest/v1/{table}", self._table, methods=["GET", "POST", "PATCH", "DELETE", "PUT"]),
            ],
            lifespan=self._lifespan,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="postgrest", daemon=True)
        self._thread.start()
        for _ in range(600):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("the PostgREST test server did not start")
            threading.Event().wait(0.05)
        raise RuntimeError("the PostgREST test server did not start within 30 s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        # Connections are opened on demand, so the server starts (and answers 503) while the
        # database is unreachable, as PostgREST does.
        self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=20, timeout=5, command_timeout=30)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool.terminate()

    # -- requests ---------------------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        apikey = request.headers.get("apikey") or request.query_params.get("apikey")
        if not apikey:
            return gateway_error("No API key found in request", "No `apikey` request header or url param was found.")
        if apikey != self.key:
            return gateway_error("Invalid API key", "Double check your Supabase `anon` or `service_role` API key.")
        authorization = request.headers.get("authorization")
        if authorization is not None and authorization != f"Bearer {self.key}":
            return error(401, "PGRST301", "No suitable key or wrong key type")
        return None

    async def _prelude(self, request: Request) -> Response | None:
        query = f"?{request.url.query}" if request.url.query else ""
        self.requests.append((request.method, request.url.path + query))
        if self.fail_next:
            answer = self.fail_next.pop(0)(request)
            if answer is not None:
                return answer
        return self._refused(request)

    async def _run(self, work: Callable[[asyncpg.Connection], Any]) -> Response:
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                result: Response = await work(conn)
                return result
        except asyncpg.PostgresError as exc:
            sqlstate = exc.sqlstate or "XX000"
            if sqlstate.startswith("08") or isinstance(exc, asyncpg.exceptions.CannotConnectNowError):
                return error(503, "PGRST000", "Could not connect with the database", str(exc))
            return error(http_status(sqlstate), sqlstate, exc.message if hasattr(exc, "message") else str(exc),
                         getattr(exc, "detail", None), getattr(exc, "hint", None))
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
            return error(503, "PGRST000", "Could not connect with the database", f"{type(exc).__name__}: {exc}")

    async def _columns(self, conn: asyncpg.Connection, table: str) -> dict[str, str] | None:
        rows = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            self.schema, table,
        )
        return {r["column_name"]: r["data_type"] for r in rows} or None

    async def _table(self, request: Request) -> Response:
        refused = await self._prelude(request)
        if refused is not None:
            return refused
        table = request.path_params["table"]
        if request.method != "GET":
            return error(405, "PGRST117", f"{request.method} on tables is not implemented by this test server")

        async def select(conn: asyncpg.Connection) -> Response:
            columns = await self._columns(conn, table)
            if columns is None:
                return error(404, "PGRST205", f"Could not find the table '{self.schema}.{table}' in the schema cache")
            params: list[Any] = []
            where: list[str] = []
            order: list[str] = []
            picked = "*"
            limit = ""
            for name, value in request.query_params.multi_items():
                if name == "select":
                    wanted = [c for c in value.split(",") if c]
                    if "*" not in wanted:
                        for c in wanted:
                            if c not in columns:
                                return error(400, "42703", f"column {table}.{c} does not exist")
                        picked = ", ".join(quote(c) for c in wanted)
                elif name == "order":
                    for term in value.split(","):
                        column, *modifiers = term.split(".")
                        if column not in columns:
                            return error(400, "42703", f"column {table}.{column} does not exist")
                        direction = "DESC" if "desc" in modifiers else "ASC"
                        nulls = " NULLS FIRST" if "nullsfirst" in modifiers else (
                            " NULLS LAST" if "nullslast" in modifiers else "")
                        order.append(f"{quote(column)} {direction}{nulls}")
                elif name == "limit":
                    if not value.isdigit():
                        return error(400, "PGRST102", f'"{value}" is not a valid limit')
                    limit = f" LIMIT {int(value)}"
                else:
                    if name not in columns:
                        return error(400, "42703", f"column {table}.{name} does not exist")
                    op, _, operand = value.partition(".")
                    if op == "is" and operand in ("null", "true", "false"):
                        where.append(f"{quote(name)} IS {operand.upper()}")
                    elif op in OPERATORS:
                        params.append(operand)
                        where.append(f"{quote(name)} {OPERATORS[op]} ${len(params)}::text::{columns[name]}")
                    else:
                        return error(400, "PGRST100", f'failed to parse filter ({value})', f"unknown operator {op!r}")
            sql = f"SELECT {picked} FROM {quote(self.schema)}.{quote(table)}"
            if where:
                sql += " WHERE " + " AND ".join(where)
            if order:
                sql += " ORDER BY " + ", ".join(order)
            sql += limit
            body = await conn.fetchval(f"SELECT coalesce(json_agg(_r), '[]')::text FROM ({sql}) _r", *params)
            return Response(body, media_type="application/json", headers={"Content-Range": "0-*/*"})

        return await self._run(select)

    async def _rpc(self, request: Request) -> Response:
        refused = await self._prelude(request)
        if refused is not None:
            return refused
        function = request.path_params["function"]
        try:
            args = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return error(400, "PGRST102", "Empty or invalid json", str(exc))
        if not isinstance(args, dict):
            return error(400, "PGRST102", "the arguments of a function call must be a JSON object")

        async def call(conn: asyncpg.Connection) -> Response:
            candidates = await conn.fetch(
                "SELECT p.proargnames AS names, p.pronargdefaults AS defaults, p.pronargs AS nargs,"
                " array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) AS t) AS types,"
                " p.prorettype = 'void'::regtype AS void"
                " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = $1 AND p.proname = $2",
                self.schema, function,
            )
            given = set(args)
            for fn in candidates:
                names = list(fn["names"] or [])[: fn["nargs"]]
                required = set(names[: fn["nargs"] - fn["defaults"]])
                if required <= given <= set(names):
                    break
            else:
                return error(404, "PGRST202",
                             f"Could not find the function {self.schema}.{function}({', '.join(sorted(given))})"
                             " in the schema cache",
                             "Searched for the function with the given parameter names but no matches were found.")
            types = dict(zip(names, fn["types"], strict=True))
            used = [n for n in names if n in given]
            record = ", ".join(f"{quote(n)} {types[n]}" for n in used) or "_none text"
            call_args = ", ".join(f"{quote(n)} := _a.{quote(n)}" for n in used)
            target = f"{quote(self.schema)}.{quote(function)}({call_args})"
            source = f"FROM json_to_record($1::json) AS _a({record})"
            if fn["void"]:
                await conn.execute(f"SELECT {target} {source}", json.dumps(args))
                return Response(status_code=204)
            body = await conn.fetchval(f"SELECT to_jsonb({target})::text {source}", json.dumps(args))
            return Response(body or "null", media_type="application/json")

        return await self._run(call)
