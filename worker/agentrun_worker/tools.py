"""The tools an agent may call, how a run's set is chosen, and the registry that runs them.

``execution`` builds the run's :class:`Registry` through ``mcp.registry_for`` (which starts
the run's MCP servers and calls :func:`for_agent`); ``agent`` shows the model its schemas,
appends :attr:`Registry.prompt` to the system prompt and runs each call the model makes. A
tool's failure — an exception, a :class:`ToolFailed`, arguments that are not a JSON object,
a tool that does not exist — becomes a tool *error result* the model sees on its next turn,
never a crashed run. Cancellation (a stop) is not a failure: it goes through.

Built-ins, always offered (as in the seed): ``complete`` (the agent declares the task done:
the run ends ``Succeeded``/``Completed``) and ``ask`` (the agent asks the user something: the
run ends ``Succeeded``/``AskedUser``; the answer comes as a new AgentRun on the same thread).

Selection, ``spec.agent.toolMode`` — the seed's three modes:

- ``enabled`` (default): the built-ins, the tools ``spec.agent.tools`` names (a worker tool,
  an MCP server's name for all its tools, or one MCP tool ``<server>__<tool>``), and every
  tool of the agent's own ``mcpServers``;
- ``all``: every tool the worker has, with every tool of every MCP server (the pool's
  standard ones and the agent's);
- ``builder``: the restricted set of an agent that designs agents: the built-ins and
  ``list_tools`` (the catalogue of what the other modes could offer), nothing that acts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import structlog

from agentrun import reasons

logger = structlog.get_logger(__name__)

COMPLETED = reasons.Reason.COMPLETED
ASKED_USER = reasons.Reason.ASKED_USER

ENABLED, ALL, BUILDER = "enabled", "all", "builder"
MODES = (ENABLED, ALL, BUILDER)
DEFAULT_MODE = ENABLED
"""The default keeps what an agent did not ask for out of its reach: a pool's standard MCP
servers are only offered to agents that name them (or choose ``all``)."""

MCP_SEPARATOR = "__"
"""Between the server and the tool in the name the model sees: ``search__query``."""


class ToolNotFound(Exception):
    """``spec.agent.tools`` names a tool this worker does not have: the run fails at once."""

    reason = reasons.Reason.TOOL_NOT_FOUND


class ToolFailed(Exception):
    """A tool's own failure, shown to the model as ``error: <message>`` (no exception type)."""


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object."""
    run: Callable[[dict[str, Any]], Awaitable[str]]
    ends_run: str | None = None
    """``Completed`` or ``AskedUser`` when a call of this tool ends the agent loop."""

    def schema(self) -> dict[str, Any]:
        """The Chat Completions function-tool schema shown to the model."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclasses.dataclass(frozen=True)
class Server:
    """What one connected MCP server offers a run (built by ``mcp``)."""

    name: str
    tools: tuple[Tool, ...]
    """Named ``<server>__<tool>`` (sanitized), with the server's JSON schemas."""
    own: bool = False
    """Declared by the agent (``spec.agent.mcpServers``), not one of the pool's standard servers."""
    instructions: str = ""


@dataclasses.dataclass
class Result:
    content: str
    error: bool = False
    ends_run: str | None = None


class Registry:
    def __init__(self, tools: Iterable[Tool], *, prompt: str = "") -> None:
        self._tools = {tool.name: tool for tool in tools}
        self.prompt = prompt
        """A section for the system prompt: what each MCP server offers ("" without servers)."""

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self._tools.values()]

    async def call(self, name: str, arguments: str) -> Result:
        tool = self._tools.get(name)
        if tool is None:
            return Result(f"error: no tool named {name!r}; available: {', '.join(self._tools)}", error=True)
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return Result(f"error: the arguments are not valid JSON ({exc})", error=True)
        if not isinstance(args, dict):
            return Result("error: the arguments must be a JSON object", error=True)
        try:
            content = await tool.run(args)
        except ToolFailed as exc:
            logger.warning("tool.failed", tool=name, error=str(exc))
            return Result(f"error: {exc}", error=True)
        except Exception as exc:  # the model sees the failure and may recover; the run goes on
            logger.warning("tool.failed", tool=name, error=str(exc) or type(exc).__name__)
            return Result(f"error: {type(exc).__name__}: {exc}", error=True)
        return Result(content, ends_run=tool.ends_run)


async def _complete(args: dict[str, Any]) -> str:
    return str(args.get("text") or "")


async def _ask(args: dict[str, Any]) -> str:
    return str(args.get("text") or "")


_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": False}

COMPLETE = Tool(
    name="complete",
    description="Call when the task is finished. `text`: the final answer or a summary for the user.",
    parameters=_TEXT,
    run=_complete,
    ends_run=COMPLETED,
)
ASK = Tool(
    name="ask",
    description=("Ask the user a question and wait for the answer (it arrives in a later run on this "
                 "conversation). `text`: the question."),
    parameters={**_TEXT, "required": ["text"]},
    run=_ask,
    ends_run=ASKED_USER,
)
BUILTINS: tuple[Tool, ...] = (COMPLETE, ASK)
LIST_TOOLS = "list_tools"

AVAILABLE: dict[str, Tool] = {tool.name: tool for tool in BUILTINS}
"""Every tool this worker has, by name, besides ``list_tools`` (built per run) and MCP tools."""


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a description, cut at ``limit`` characters."""
    line = (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _catalogue(available: dict[str, Tool], servers: Sequence[Server]) -> Tool:
    """``list_tools``: what this worker could offer an agent, for agents that design agents."""
    lines = ["Worker tools (name them in spec.agent.tools):"]
    lines += [f"- {t.name}: {one_line(t.description)}" for t in available.values()]
    for server in servers:
        origin = "the agent's own server" if server.own else "a standard server of the pool"
        lines.append(f"MCP server {server.name} ({origin}; name it in spec.agent.tools for all its tools):")
        lines += [f"- {t.name}: {one_line(t.description)}" for t in server.tools]
    text = "\n".join(lines)

    async def run(args: dict[str, Any]) -> str:
        return text

    return Tool(name=LIST_TOOLS, run=run,
                description="List every tool and MCP server this worker can offer an agent, with descriptions.",
                parameters={"type": "object", "properties": {}, "additionalProperties": False})


def prompt_section(servers: Sequence[Server], offered: Iterable[str]) -> str:
    """The system prompt's account of each MCP server whose tools the model was given."""
    chosen = set(offered)
    parts: list[str] = []
    for server in servers:
        tools = [t for t in server.tools if t.name in chosen]
        if not tools:
            continue
        part = [f"### {server.name}"]
        if server.instructions.strip():
            part.append(one_line(server.instructions, 500))
        part += [f"- `{t.name}`: {one_line(t.description) or 'no description'}" for t in tools]
        parts.append("\n".join(part))
    if not parts:
        return ""
    head = ("## MCP servers\n\nThese tools come from Model Context Protocol servers; each is named "
            f"<server>{MCP_SEPARATOR}<tool>. Call them like any other tool.")
    return "\n\n".join([head, *parts])


def mode_of(agent: dict[str, Any]) -> str:
    mode = str(agent.get("toolMode") or DEFAULT_MODE)
    if mode not in MODES:
        raise ToolNotFound(f"spec.agent.toolMode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def for_agent(agent: dict[str, Any], available: dict[str, Tool] | None = None,
              servers: Sequence[Server] = ()) -> Registry:
    """The run's tools by ``spec.agent.toolMode``; a name in ``tools`` nothing matches raises ToolNotFound."""
    available = AVAILABLE if available is None else available
    mode = mode_of(agent)
    catalogue = _catalogue(available, servers)
    chosen = {tool.name: tool for tool in BUILTINS}
    if mode == BUILDER:
        chosen[LIST_TOOLS] = catalogue
        return Registry(chosen.values())
    if mode == ALL:
        chosen.update(available)
        chosen[LIST_TOOLS] = catalogue
        for server in servers:
            chosen.update((t.name, t) for t in server.tools)
    else:
        for server in servers:
            if server.own:
                chosen.update((t.name, t) for t in server.tools)
        by_server = {server.name: server for server in servers}
        mcp_tools = {t.name: t for server in servers for t in server.tools}
        for name in agent.get("tools") or []:
            if name in available:
                chosen[name] = available[name]
            elif name == LIST_TOOLS:
                chosen[name] = catalogue
            elif name in by_server:
                chosen.update((t.name, t) for t in by_server[name].tools)
            elif name in mcp_tools:
                chosen[name] = mcp_tools[name]
            else:
                known = sorted({*available, LIST_TOOLS, *by_server, *mcp_tools})
                raise ToolNotFound(f"spec.agent.tools: no tool or MCP server named {name!r} in this worker; "
                                   f"available: {', '.join(known)}")
    return Registry(chosen.values(), prompt=prompt_section(servers, chosen))
