"""The tools an agent may call, and the registry that runs them.

``execution`` builds the run's :class:`Registry` with :func:`for_agent` (the built-ins plus
the tools ``spec.agent.tools`` names); ``agent`` shows the model its schemas and runs each
call the model makes. A tool's failure — an exception, arguments that are not a JSON object,
a tool that does not exist — becomes a tool *error result* the model sees on its next turn,
never a crashed run.

Built-ins, always offered (as in the seed): ``complete`` (the agent declares the task done:
the run ends ``Succeeded``/``Completed``) and ``ask`` (the agent asks the user something: the
run ends ``Succeeded``/``AskedUser``; the answer comes as a new AgentRun on the same thread).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

logger = structlog.get_logger(__name__)

COMPLETED = "Completed"
ASKED_USER = "AskedUser"


class ToolNotFound(Exception):
    """``spec.agent.tools`` names a tool this worker does not have: the run fails at once."""

    reason = "ToolNotFound"


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


@dataclasses.dataclass
class Result:
    content: str
    error: bool = False
    ends_run: str | None = None


class Registry:
    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = {tool.name: tool for tool in tools}

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

AVAILABLE: dict[str, Tool] = {tool.name: tool for tool in BUILTINS}
"""Every tool this worker has, by name (the built-ins; MCP servers will add theirs)."""


def for_agent(agent: dict[str, Any], available: dict[str, Tool] | None = None) -> Registry:
    """The built-ins plus every tool ``agent["tools"]`` names; unknown names raise ToolNotFound."""
    available = AVAILABLE if available is None else available
    chosen = {tool.name: tool for tool in BUILTINS}
    for name in agent.get("tools") or []:
        if name not in available:
            raise ToolNotFound(f"no tool named {name!r} in this worker; available: {', '.join(sorted(available))}")
        chosen[name] = available[name]
    return Registry(chosen.values())
