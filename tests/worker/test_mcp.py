"""MCP servers in a run's registry, against a real MCP server (``mcp_server.py``) over stdio and
streamable HTTP: listing with schemas, calls, failures as tool errors, secrets from the worker's
environment, merging with the pool's servers, the three tool modes, cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agentrun_worker import config, mcp, tools

from tests.e2e import harness
from tests.worker import mcp_server

SERVER = str(pathlib.Path(mcp_server.__file__).resolve())
TOKEN = "mcp-http-token-never-logged"


def stdio(name: str = "testkit", **extra: Any) -> dict[str, Any]:
    return {"name": name, "transport": "stdio", "command": sys.executable, "args": [SERVER], **extra}


def settings(*pool: dict[str, Any], **extra: Any) -> config.WorkerSettings:
    return config.WorkerSettings(mcp_servers=list(pool), **extra)


@pytest.fixture
async def toolbox() -> AsyncIterator[mcp.Toolbox]:
    box = mcp.Toolbox()
    yield box
    await box.aclose()


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    """The test server over streamable HTTP (uvicorn), requiring ``Authorization: Bearer TOKEN``."""
    port = harness.free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port), "--token-env", "SERVER_TOKEN"],
                            env={**os.environ, "SERVER_TOKEN": TOKEN})

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        harness.wait_until(listening, 60, "the MCP test server to listen")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_stdio_tools_reach_the_model_with_their_schemas_and_the_prompt_names_them(
    toolbox: mcp.Toolbox,
) -> None:
    # Given an agent with its own stdio MCP server
    agent = {"mcpServers": [stdio()]}
    # When the run's registry is built
    registry = await mcp.registry_for(agent, settings(), toolbox)
    # Then the server's tools are offered as <server>__<tool>, after the built-ins, with their schemas
    assert registry.names[:2] == ["complete", "ask"]
    assert set(registry.names[2:]) == {"testkit__echo", "testkit__add", "testkit__fail", "testkit__hang",
                                       "testkit__crash", "testkit__token_digest"}
    add = next(s["function"] for s in registry.schemas() if s["function"]["name"] == "testkit__add")
    assert add["description"] == "Add two integers."
    assert add["parameters"]["type"] == "object" and set(add["parameters"]["required"]) == {"a", "b"}
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    # And the system prompt section says what the server offers
    assert "## MCP servers" in registry.prompt and "### testkit" in registry.prompt
    assert "Test tools for agentrun." in registry.prompt
    assert "- `testkit__add`: Add two integers." in registry.prompt
    # And a call goes to the server and back
    assert await registry.call("testkit__add", '{"a": 2, "b": 3}') == tools.Result("5")
    assert await registry.call("testkit__echo", '{"text": "hi"}') == tools.Result("echo: hi")


async def test_failures_of_mcp_tools_become_tool_errors(toolbox: mcp.Toolbox) -> None:
    registry = await mcp.registry_for({"mcpServers": [stdio(timeoutSeconds=1)]}, settings(), toolbox)
    # An isError result: the tool's own message
    assert await registry.call("testkit__fail", '{"message": "no luck"}') == tools.Result(
        "error: Error executing tool fail: no luck", error=True)
    # Arguments the server's schema refuses
    bad = await registry.call("testkit__add", '{"a": "x", "b": 1}')
    assert bad.error and bad.content.startswith("error: ")
    # A call past the server's timeoutSeconds
    slow = await registry.call("testkit__hang", "{}")
    assert slow == tools.Result('error: the MCP tool hang of server "testkit" did not answer within 1 s', error=True)
    # The server still answers after a timed-out call
    assert await registry.call("testkit__echo", '{"text": "still here"}') == tools.Result("echo: still here")
    # A server that dies mid-call, and calls after that
    crashed = await registry.call("testkit__crash", "{}")
    assert crashed.error and 'MCP server "testkit"' in crashed.content, crashed
    after = await registry.call("testkit__echo", '{"text": "x"}')
    assert after.error and 'MCP server "testkit"' in after.content, after


async def test_http_headers_and_stdio_env_come_from_the_worker_environment(
    toolbox: mcp.Toolbox, http_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pool server over HTTP whose token is named, not given, and an agent stdio server
    # whose environment variable comes from another worker variable
    monkeypatch.setenv("POOL_MCP_TOKEN", TOKEN)
    monkeypatch.setenv("POOL_SECRET", "s3cret-value")
    pool = {"name": "web", "transport": "http", "url": http_url,
            "headersFrom": [{"name": "Authorization", "fromEnv": "POOL_MCP_TOKEN", "prefix": "Bearer "}]}
    agent = {"toolMode": "all", "mcpServers": [stdio(envFrom=[{"name": "TOKEN", "fromEnv": "POOL_SECRET"}])]}
    # When the registry is built and both servers are called
    registry = await mcp.registry_for(agent, settings(pool), toolbox)
    # Then the HTTP server accepted the header, and the stdio server saw the variable
    assert await registry.call("web__echo", '{"text": "over http"}') == tools.Result("echo: over http")
    digest = await registry.call("testkit__token_digest", '{"name": "TOKEN"}')
    assert digest == tools.Result(mcp_server.digest("s3cret-value"))
    # And the worker's other variables do not leak into the stdio server
    assert await registry.call("testkit__token_digest", '{"name": "POOL_SECRET"}') == tools.Result("unset")


async def test_a_server_that_cannot_be_reached_fails_the_run_naming_it_without_the_secret(
    toolbox: mcp.Toolbox, http_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = [{"name": "Authorization", "fromEnv": "POOL_MCP_TOKEN", "prefix": "Bearer "}]
    web = {"name": "web", "transport": "http", "url": http_url, "headersFrom": header}
    # A variable the spec names but the worker does not have
    monkeypatch.delenv("POOL_MCP_TOKEN", raising=False)
    with pytest.raises(mcp.ServerUnavailable, match="POOL_MCP_TOKEN, which is not set") as caught:
        await mcp.registry_for({"mcpServers": [web]}, settings(), toolbox)
    assert caught.value.reason == "MCPServerUnavailable"
    # A wrong token: the server refuses, the message names the server and not the value
    monkeypatch.setenv("POOL_MCP_TOKEN", "wrong-token-value")
    with pytest.raises(mcp.ServerUnavailable, match='MCP server "web"') as refused:
        await mcp.registry_for({"mcpServers": [web]}, settings(), toolbox)
    assert "wrong-token-value" not in str(refused.value)
    # A command that does not exist
    missing = {"name": "gone", "transport": "stdio", "command": f"/nonexistent/{uuid.uuid4().hex}"}
    with pytest.raises(mcp.ServerUnavailable, match='MCP server "gone" \\(stdio\\) could not be started'):
        await mcp.registry_for({"mcpServers": [missing]}, settings(), toolbox)


async def test_the_three_tool_modes_offer_their_sets(toolbox: mcp.Toolbox) -> None:
    # Given a pool with a standard server and an agent with its own
    pool = settings(stdio("pool"))
    own = [stdio("own")]

    async def names(**agent: Any) -> list[str]:
        box = mcp.Toolbox()
        try:
            return (await mcp.registry_for({"mcpServers": own, **agent}, pool, box)).names
        finally:
            await box.aclose()

    own_tools = [f"own__{t}" for t in ("echo", "add", "fail", "hang", "crash", "token_digest")]
    pool_tools = [f"pool__{t}" for t in ("echo", "add", "fail", "hang", "crash", "token_digest")]
    # enabled (the default): built-ins and the agent's own server; the pool's only by name
    assert sorted(await names()) == sorted(["complete", "ask", *own_tools])
    assert sorted(await names(tools=["pool__echo"])) == sorted(["complete", "ask", *own_tools, "pool__echo"])
    assert sorted(await names(tools=["pool", "list_tools"])) == sorted(
        ["complete", "ask", "list_tools", *own_tools, *pool_tools])
    # all: everything the worker and every server have
    assert sorted(await names(toolMode="all")) == sorted(["complete", "ask", "list_tools", *own_tools, *pool_tools])
    # builder: the built-ins and the catalogue, which lists what the others could get
    builder = await mcp.registry_for({"toolMode": "builder", "mcpServers": own}, pool, toolbox)
    assert builder.names == ["complete", "ask", "list_tools"]
    assert builder.prompt == ""
    catalogue = (await builder.call("list_tools", "{}")).content
    assert "MCP server pool (a standard server of the pool" in catalogue
    assert "- pool__add: Add two integers." in catalogue and "- own__echo: Return the text unchanged." in catalogue
    # A name nothing matches fails the run
    with pytest.raises(tools.ToolNotFound, match="no tool or MCP server named 'pool__nope'"):
        await names(tools=["pool__nope"])


def test_the_pool_servers_an_enabled_agent_does_not_name_are_not_started() -> None:
    servers = mcp.merge([stdio("a"), stdio("b"), stdio("c")], [stdio("own")])
    started = mcp.needed({"tools": ["b__echo", "c"]}, servers)
    assert [s.name for s in started] == ["b", "c", "own"]
    assert [s.name for s in mcp.needed({"toolMode": "all"}, servers)] == ["a", "b", "c", "own"]


def test_the_agent_server_wins_a_name_clash_with_the_pool() -> None:
    merged = mcp.merge([stdio("search", args=["pool"]), stdio("other")], [stdio("search", args=["agent"])])
    assert [(s.name, s.args, s.own) for s in merged] == [("search", ["agent"], True), ("other", [SERVER], False)]


def test_a_bad_server_item_is_refused_naming_the_field() -> None:
    with pytest.raises(mcp.ServerUnavailable, match=r"WorkerPool spec.mcpServers\[0\].transport"):
        mcp.merge([{"name": "x", "transport": "grpc"}], [])
    with pytest.raises(mcp.ServerUnavailable, match=r"spec.agent.mcpServers\[1\].headers"):
        mcp.merge([], [stdio("a"), {**stdio("b"), "headers": {"Authorization": "literal"}}])


def test_tool_names_fit_the_providers_rules_and_stay_unique() -> None:
    taken: set[str] = set()
    assert mcp.tool_name("fs", "read.file/v2", taken) == "fs__read_file_v2"
    long = "t" * 80
    first, second = mcp.tool_name("srv", long, taken), mcp.tool_name("srv", long, taken)
    assert len(first) == len(second) == 64 and first != second and second.endswith("_2")


def test_the_worker_reads_the_pool_servers_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_MCP_SERVERS", json.dumps([stdio("std")]))
    assert config.load().mcp_servers == [stdio("std")]


async def test_a_cancelled_call_stops_at_once_and_the_server_is_closed(toolbox: mcp.Toolbox) -> None:
    # Given a call of a tool that never answers
    registry = await mcp.registry_for({"mcpServers": [stdio(args=[SERVER, "--tag", "cancel-test"])]},
                                      settings(), toolbox)
    call = asyncio.get_running_loop().create_task(registry.call("testkit__hang", "{}"))
    await asyncio.sleep(0.5)
    assert not call.done()
    # When the run is stopped (its task cancelled)
    call.cancel()
    # Then the call ends cancelled, not as a result
    with pytest.raises(asyncio.CancelledError):
        await call
    # And closing the toolbox ends the server process
    await toolbox.aclose()
    assert not [p for p in pathlib.Path("/proc").glob("[0-9]*") if _cmdline_has(p, "cancel-test")]


def _cmdline_has(proc: pathlib.Path, marker: str) -> bool:
    try:
        return marker in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


async def test_a_stop_while_servers_start_interrupts_at_once_and_ends_them(toolbox: mcp.Toolbox) -> None:
    # Given a stdio "server" that never answers the MCP handshake (connect timeout far away)
    tag = uuid.uuid4().hex
    silent = {"name": "silent", "transport": "stdio", "command": sys.executable,
              "args": ["-c", "import time; time.sleep(3600)", tag]}
    stop = asyncio.Event()
    starting = asyncio.get_running_loop().create_task(
        mcp.registry_for({"mcpServers": [silent]}, settings(mcp_connect_timeout_seconds=3600), toolbox, stop))
    polls = 0
    while not [p for p in pathlib.Path("/proc").glob("[0-9]*") if _cmdline_has(p, tag)]:
        polls += 1
        assert polls < 1200, "the server process never started"
        await asyncio.sleep(0.05)
    assert not starting.done()
    # When the run is asked to stop
    stop.set()
    # Then the start is interrupted (not a failure), and the process is gone
    with pytest.raises(mcp.Interrupted):
        await starting
    assert not [p for p in pathlib.Path("/proc").glob("[0-9]*") if _cmdline_has(p, tag)]


async def test_tool_names_stay_unique_across_servers_whose_long_names_share_a_prefix(
    toolbox: mcp.Toolbox,
) -> None:
    # Given two servers with 63-character names: every tool name is cut to 64 characters, and
    # the suffixes that keep them apart cut into the server names, where they are the same
    first, second = "x" * 61 + "ab", "x" * 61 + "ac"
    registry = await mcp.registry_for({"mcpServers": [stdio(first), stdio(second)]}, settings(), toolbox)
    # Then the run still has twelve distinct MCP tool names within the providers' limit
    names = registry.names
    assert len(names) == len(set(names)) == 2 + 12
    assert all(len(n) <= 64 and not mcp._INVALID.search(n) for n in names)
