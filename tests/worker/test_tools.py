"""The tool registry: selection from the agent spec, and failures that become tool errors."""

from __future__ import annotations

from typing import Any

import pytest
from agentrun_worker import tools


async def _echo(args: dict[str, Any]) -> str:
    return f"echo {args['x']}"


ECHO = tools.Tool("echo", "Echo x.", {"type": "object"}, _echo)


def test_the_builtins_are_always_offered_and_named_tools_are_added() -> None:
    assert tools.for_agent({}).names == ["complete", "ask"]
    registry = tools.for_agent({"tools": ["echo"]}, available={"echo": ECHO})
    assert registry.names == ["complete", "ask", "echo"]
    assert registry.schemas()[2] == {"type": "function", "function": {
        "name": "echo", "description": "Echo x.", "parameters": {"type": "object"}}}


def test_an_unknown_tool_in_the_spec_fails_the_run_with_tool_not_found() -> None:
    with pytest.raises(tools.ToolNotFound, match="no tool or MCP server named 'nope'") as caught:
        tools.for_agent({"tools": ["nope"]})
    assert caught.value.reason == "ToolNotFound"


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"x": 1}', tools.Result("echo 1")),
    ("", tools.Result("error: KeyError: 'x'", error=True)),
    ("{not json", None),
    ("[1, 2]", tools.Result("error: the arguments must be a JSON object", error=True)),
])
async def test_bad_arguments_and_failures_become_error_results(arguments: str, expected: tools.Result | None) -> None:
    result = await tools.for_agent({"tools": ["echo"]}, available={"echo": ECHO}).call("echo", arguments)
    if expected is None:
        assert result.error and result.content.startswith("error: the arguments are not valid JSON")
    else:
        assert result == expected


async def test_complete_and_ask_end_the_run_with_their_text() -> None:
    registry = tools.for_agent({})
    assert await registry.call("complete", '{"text": "done"}') == tools.Result("done", ends_run="Completed")
    assert await registry.call("ask", '{"text": "why?"}') == tools.Result("why?", ends_run="AskedUser")
