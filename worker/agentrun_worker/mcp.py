"""A run's MCP servers: connected with the official ``mcp`` SDK, their tools in the run's registry.

``execution`` calls :func:`registry_for` once per run with the run's :class:`Toolbox` and
closes the toolbox on every exit path (success, failure, stop, hand-back, lost lease).

Servers: the pool's standard ones (``WorkerPool.spec.mcpServers``, delivered to the worker as
``AGENTRUN_MCP_SERVERS``) merged with the agent's own (``spec.agent.mcpServers``); on a name
clash the agent's wins. Which of them start depends on ``spec.agent.toolMode`` (see
``tools``): ``all`` and ``builder`` start every one, ``enabled`` the agent's own and the
standard ones ``spec.agent.tools`` names. A server that cannot be started or reached fails
the run with ``MCPServerUnavailable`` naming it: an agent that silently lost its tools would
answer wrong instead.

Transports: ``stdio`` (the SDK spawns ``command``; its environment is the SDK's minimal
default plus ``envFrom``) and ``http`` (streamable HTTP to ``url``, with ``headersFrom``).
Secrets: ``envFrom``/``headersFrom`` name *environment variables of the worker* (set on the
WorkerPool, from Secrets); the AgentRun and the broker message carry only those names, and
values are never logged.

Each server lives in its own task that enters and leaves the SDK's context managers (their
anyio task groups must be left by the task that entered them, and a crashing server must not
cancel the run's task). A call races the server's task, so a server that dies mid-call gives
an error at once; it has a timeout (``timeoutSeconds`` of the server, else the worker's
``AGENTRUN_MCP_TOOL_TIMEOUT_SECONDS``). An ``isError`` result, an MCP error, a timeout and a
dead server all become tool errors the model sees; cancelling the run cancels the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx2
import mcp_types
import pydantic
import structlog

from agentrun import reasons
from agentrun_worker import config, tools

if TYPE_CHECKING:
    from mcp import Client

# The SDK itself (``mcp``, which imports OpenTelemetry's API) is imported when a run first
# starts a server, not when the worker starts: a worker whose runs use no MCP server never
# loads it.

logger = structlog.get_logger(__name__)

NAME_MAX = 64
"""Longest tool name the providers accept (OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``)."""
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
_CLOSE_SECONDS = 10.0
"""How long a server may take to shut down (the SDK gives a stdio server 2 s, then kills it)."""


class ServerUnavailable(Exception):
    """A server the run needs could not be started, reached or configured: the run fails."""

    reason = reasons.Reason.MCP_SERVER_UNAVAILABLE


class Interrupted(Exception):
    """The run was asked to stop while its servers were starting: it ends ``Stopped``."""


class _FromEnv(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    from_env: str = pydantic.Field(alias="fromEnv")
    prefix: str = ""


class ServerSpec(pydantic.BaseModel):
    """One ``mcpServers`` item, as the CRDs define it."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str
    transport: Literal["stdio", "http"]
    url: str | None = None
    command: str | None = None
    args: list[str] = []
    env_from: list[_FromEnv] = pydantic.Field(default=[], alias="envFrom")
    headers_from: list[_FromEnv] = pydantic.Field(default=[], alias="headersFrom")
    timeout_seconds: float | None = pydantic.Field(default=None, alias="timeoutSeconds", gt=0)
    own: bool = False
    """Declared by the agent, not by the pool (set here, not in manifests)."""


def _parse(items: Sequence[dict[str, Any]], where: str, own: bool) -> list[ServerSpec]:
    specs = []
    for index, item in enumerate(items):
        try:
            specs.append(ServerSpec.model_validate({**item, "own": own}))
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ServerUnavailable(f"{where}[{index}].{field}: {first['msg']}") from None
    return specs


def merge(pool: Sequence[dict[str, Any]], agent: Sequence[dict[str, Any]]) -> list[ServerSpec]:
    """The pool's standard servers, then the agent's; the agent's wins a name both use."""
    merged = {s.name: s for s in _parse(pool, "WorkerPool spec.mcpServers", own=False)}
    merged.update((s.name, s) for s in _parse(agent, "spec.agent.mcpServers", own=True))
    return list(merged.values())


def needed(agent: dict[str, Any], servers: Sequence[ServerSpec]) -> list[ServerSpec]:
    """The servers the run's tool mode can offer tools of (only these are started)."""
    if tools.mode_of(agent) != tools.ENABLED:
        return list(servers)
    named = set(agent.get("tools") or [])
    prefixes = tuple(str(n).partition(tools.MCP_SEPARATOR)[0] for n in named if tools.MCP_SEPARATOR in str(n))
    return [s for s in servers if s.own or s.name in named or s.name in prefixes]


def tool_name(server: str, tool: str, taken: set[str]) -> str:
    """``<server>__<tool>`` in the providers' alphabet, at most 64 characters, unique in ``taken``."""
    base = _INVALID.sub("_", f"{server}{tools.MCP_SEPARATOR}{tool}")[:NAME_MAX]
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: NAME_MAX - len(suffix)] + suffix
    taken.add(name)
    return name


def resolve_command(command: str, server: str) -> str:
    """The executable a stdio server's ``command`` names, found as in the worker image: the
    worker's own virtualenv's bin directory first (where ``pip install`` puts MCP servers,
    even when the virtualenv is not activated), then ``PATH``."""
    if os.sep in command:
        return command
    own = pathlib.Path(sys.executable).parent / command
    if own.is_file() and os.access(own, os.X_OK):
        return str(own)
    found = shutil.which(command)
    if found:
        return found
    raise ServerUnavailable(
        f'MCP server "{server}": command {command!r} not found in the worker\'s virtualenv '
        f"({pathlib.Path(sys.executable).parent}) nor on its PATH; install it there (pip install …) "
        "or give its full path")


def _secrets(items: Sequence[_FromEnv], server: str, field: str) -> dict[str, str]:
    values = {}
    for item in items:
        value = config.getenv(item.from_env)
        if value is None:
            raise ServerUnavailable(
                f'MCP server "{server}": {field} {item.name} needs the worker environment variable '
                f"{item.from_env}, which is not set (set it on the WorkerPool)"
            )
        values[item.name] = item.prefix + value
    return values


def _content_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as the text the model reads: text blocks as they are, others described."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            mime = getattr(block, "mime_type", "")
            parts.append(f"[{block.type} {mime}]" if mime else f"[{block.type}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """The innermost useful message of an exception (anyio wraps failures in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Connection:
    """One live MCP server of a run, owned by its own task."""

    def __init__(self, spec: ServerSpec, settings: config.WorkerSettings, taken: set[str]) -> None:
        self.spec = spec
        self._settings = settings
        self._taken = taken
        self._closing = asyncio.Event()
        self._ready: asyncio.Future[tuple[Client, list[mcp_types.Tool]]] = (
            asyncio.get_running_loop().create_future())
        self._task: asyncio.Task[None] | None = None
        self._client: Client | None = None

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        spec = self.spec
        if spec.transport == "stdio":
            if not spec.command:
                raise ServerUnavailable(f'MCP server "{spec.name}": command is required for transport stdio')
            env = _secrets(spec.env_from, spec.name, "envFrom")
            from mcp.client.stdio import StdioServerParameters

            return StdioServerParameters(command=resolve_command(spec.command, spec.name), args=list(spec.args),
                                         env=env or None)
        if not spec.url:
            raise ServerUnavailable(f'MCP server "{spec.name}": url is required for transport http')
        headers = _secrets(spec.headers_from, spec.name, "headersFrom")
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
        stack.push_async_callback(http.aclose)
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(spec.url, http_client=http)

    async def _own(self) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                from mcp import Client

                client = await stack.enter_async_context(Client(self._transport(stack), cache=None))
                listed: list[mcp_types.Tool] = []
                cursor: str | None = None
                for _ in range(100):  # a server that pages forever cannot hang the run
                    page = await client.list_tools(cursor=cursor)
                    listed.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                self._client = client
                self._ready.set_result((client, listed))
                await self._closing.wait()
        except BaseException as exc:
            if not self._ready.done():
                if isinstance(exc, asyncio.CancelledError):
                    self._ready.cancel()
                else:
                    self._ready.set_exception(exc)
            elif not self._closing.is_set():
                logger.warning("mcp.server_ended", server=self.spec.name, error=_describe(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._client = None

    async def start(self) -> tools.Server:
        """Connect, list the tools; ServerUnavailable when that fails or takes too long."""
        self._task = asyncio.get_running_loop().create_task(self._own(), name=f"mcp:{self.spec.name}")
        timeout = self._settings.mcp_connect_timeout_seconds
        try:
            client, listed = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.close()
            raise ServerUnavailable(
                f'MCP server "{self.spec.name}" ({self.spec.transport}) did not answer within {timeout:g} s'
            ) from None
        except ServerUnavailable:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise ServerUnavailable(
                f'MCP server "{self.spec.name}" ({self.spec.transport}) could not be started: {_describe(exc)}'
            ) from None
        offered = tuple(self._tool(t, tool_name(self.spec.name, t.name, self._taken)) for t in listed)
        logger.info("mcp.connected", server=self.spec.name, transport=self.spec.transport, tools=len(offered))
        return tools.Server(name=self.spec.name, tools=offered, own=self.spec.own,
                            instructions=client.instructions or "")

    def _tool(self, listed: mcp_types.Tool, name: str) -> tools.Tool:
        parameters = dict(listed.input_schema or {})
        parameters.setdefault("type", "object")

        async def run(args: dict[str, Any]) -> str:
            return await self.call(listed.name, args)

        return tools.Tool(name=name, description=listed.description or listed.title or listed.name,
                          parameters=parameters, run=run)

    async def call(self, tool: str, args: dict[str, Any]) -> str:
        """One ``tools/call``; every failure a :class:`tools.ToolFailed`, cancellation passed on."""
        client, task = self._client, self._task
        if client is None or task is None or task.done():
            raise tools.ToolFailed(f'MCP server "{self.spec.name}" is not running (it ended earlier in this run)')
        timeout = self.spec.timeout_seconds or self._settings.mcp_tool_timeout_seconds
        call = asyncio.get_running_loop().create_task(client.call_tool(tool, args))
        try:
            done, _ = await asyncio.wait({call, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
        if call not in done:
            if task in done:
                raise tools.ToolFailed(f'MCP server "{self.spec.name}" ended during the call of {tool}')
            raise tools.ToolFailed(f'the MCP tool {tool} of server "{self.spec.name}" did not answer '
                                   f"within {timeout:g} s")
        error = call.exception()
        if error is not None:
            raise tools.ToolFailed(f'MCP server "{self.spec.name}", tool {tool}: {_describe(error)}')
        result = call.result()
        text = _content_text(result)
        if result.is_error:
            raise tools.ToolFailed(text or f"the MCP tool {tool} failed without a message")
        return text

    async def close(self) -> None:
        self._closing.set()
        task = self._task
        if task is None or task.done():
            return
        if not self._ready.done():  # still connecting: nothing to wind down politely
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_SECONDS)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except BaseException:  # the server's own failure, reported when it happened
            pass


class Toolbox:
    """The MCP servers of one run; :meth:`aclose` stops them all (idempotent)."""

    def __init__(self) -> None:
        self._connections: list[Connection] = []
        self._taken = {*tools.AVAILABLE, tools.LIST_TOOLS}
        """Tool names given out in this run: no MCP tool shadows a built-in or another's name."""

    async def start(self, specs: Sequence[ServerSpec], settings: config.WorkerSettings,
                    stop: asyncio.Event | None = None) -> list[tools.Server]:
        """Start every server at once; if one fails, the others are closed and it is raised.
        ``stop`` set meanwhile closes them all and raises :class:`Interrupted`."""
        connections = [Connection(spec, settings, self._taken) for spec in specs]
        self._connections.extend(connections)
        starting = asyncio.gather(*(c.start() for c in connections), return_exceptions=True)
        if stop is not None:
            stopped = asyncio.get_running_loop().create_task(stop.wait())
            waiting: set[asyncio.Future[Any]] = {starting, stopped}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(BaseException):
                    await starting
                await self.aclose()
                raise Interrupted("stopped while its MCP servers were starting")
        results = await starting
        for result in results:
            if isinstance(result, BaseException):
                await self.aclose()
                raise result
        return [r for r in results if isinstance(r, tools.Server)]

    async def aclose(self) -> None:
        connections, self._connections = self._connections, []
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


async def start_for_all(agents: Sequence[dict[str, Any]], settings: config.WorkerSettings, toolbox: Toolbox,
                        stop: asyncio.Event | None = None) -> list[tools.Server]:
    """Start, once, every server any of ``agents`` can use (a workflow's steps and its agent):
    each server is started one time for the whole run however many steps use it."""
    specs: dict[str, ServerSpec] = {}
    for agent in agents:
        tools.mode_of(agent)  # a bad mode fails before any server starts
        for spec in needed(agent, merge(settings.mcp_servers, agent.get("mcpServers") or [])):
            specs.setdefault(spec.name, spec)
    return await toolbox.start(list(specs.values()), settings, stop) if specs else []


async def registry_for(agent: dict[str, Any], settings: config.WorkerSettings, toolbox: Toolbox,
                       stop: asyncio.Event | None = None) -> tools.Registry:
    """The run's registry: the servers its tool mode needs started in ``toolbox``, then selection.
    A stop (``stop`` set) while they start raises :class:`Interrupted` at once."""
    tools.mode_of(agent)  # a bad mode fails before any server starts
    specs = needed(agent, merge(settings.mcp_servers, agent.get("mcpServers") or []))
    servers = await toolbox.start(specs, settings, stop) if specs else []
    return tools.for_agent(agent, servers=servers)
