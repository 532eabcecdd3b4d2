"""MCP tools in real runs: real kopf, a real Dramatiq worker process, RabbitMQ, Redis, PostgreSQL,
and the test MCP server (``tests/worker/mcp_server.py``) spawned by the worker over stdio and
served over streamable HTTP as the pool's standard server.

The scripted model calls the tools; ``{{toolResults}}`` in its next turn shows what reached it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentrun import streams
from tests.e2e import harness
from tests.e2e.scenarios import SERVER, agentrun, final_events, server_processes, stdio, stream_events
from tests.worker import mcp_server, openai_server

pytestmark = pytest.mark.e2e

HTTP_TOKEN = "pool-http-token-never-logged"
STDIO_SECRET = "stdio-secret-never-logged"


@pytest.fixture
def http_url() -> Iterator[str]:
    port = harness.free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port), "--token-env", "SERVER_TOKEN"],
                            env={**os.environ, "SERVER_TOKEN": HTTP_TOKEN})

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        harness.wait_until(listening, 60, "the MCP test server to listen")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)



def tool_events(events: list[dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    return [(e["type"], e["id"], e["name"], e.get("error")) for e in events
            if e["type"] in (streams.TOOL_CALL, streams.TOOL_RESULT)]



def test_a_run_calls_mcp_tools_over_stdio_and_http_and_the_results_reach_the_model(
    bed: harness.Bed, operator: Any, namespace: str, http_url: str
) -> None:
    # Given a worker whose pool has a standard HTTP server with its token in the worker's environment
    pool = [{"name": "web", "transport": "http", "url": http_url,
             "headersFrom": [{"name": "Authorization", "fromEnv": "WEB_TOKEN", "prefix": "Bearer "}]}]
    worker = bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_MCP_SERVERS=json.dumps(pool),
                              WEB_TOKEN=HTTP_TOKEN, STDIO_SECRET=STDIO_SECRET)
    # And an agent with its own stdio server (a secret by name) that names one tool of the pool's
    tag = uuid.uuid4().hex
    script = [
        {"text": "Let me work.", "toolCalls": [
            {"name": "testkit__add", "arguments": json.dumps({"a": 2, "b": 3})},
            {"name": "testkit__fail", "arguments": json.dumps({"message": "no luck"})},
            {"name": "web__echo", "arguments": json.dumps({"text": "over http"})},
            {"name": "testkit__token_digest", "arguments": json.dumps({"name": "TOKEN"})},
        ]},
        {"text": "Results: {{toolResults}}"},
    ]
    spec = agentrun(namespace, "tools")
    spec["spec"]["agent"].update(script=script, tools=["web__echo"], systemPrompt="Be useful.",
                                 mcpServers=[stdio(tag, envFrom=[{"name": "TOKEN", "fromEnv": "STDIO_SECRET"}])])
    # When the run is applied
    uid = bed.create(spec)["metadata"]["uid"]
    status = bed.wait_phase(namespace, "tools", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
    # Then it succeeded although one tool failed, and the model's next turn saw every result in order
    assert (status["phase"], status["reason"], status["iterations"]) == ("Succeeded", "Completed", 2), status
    digest = mcp_server.digest(STDIO_SECRET)
    assert status["result"] == f"Results: 5\nerror: Error executing tool fail: no luck\necho: over http\n{digest}"
    # And each call and its result were streamed in order, the failure as a tool error
    events = final_events(bed.redis_url, uid)
    assert tool_events(events) == [
        ("tool_call", "call_1_0", "testkit__add", None), ("tool_result", "call_1_0", "testkit__add", False),
        ("tool_call", "call_1_1", "testkit__fail", None), ("tool_result", "call_1_1", "testkit__fail", True),
        ("tool_call", "call_1_2", "web__echo", None), ("tool_result", "call_1_2", "web__echo", False),
        ("tool_call", "call_1_3", "testkit__token_digest", None),
        ("tool_result", "call_1_3", "testkit__token_digest", False),
    ]
    first_call = next(e for e in events if e["type"] == streams.TOOL_CALL)
    assert json.loads(first_call["arguments"]) == {"a": 2, "b": 3}
    assert [e["status"] for e in events if streams.is_terminal(e)] == ["succeeded"]
    # And the thread stores the turn with its four results
    assert [m["role"] for m in bed.db_messages(uid)] == ["user", "assistant", "tool", "tool", "tool", "tool",
                                                         "assistant"]
    # And the run's stdio server is gone, and no secret appears in the worker's log or the stream
    harness.wait_until(lambda: not server_processes(tag), 30, "the stdio MCP server to exit")
    for secret in (HTTP_TOKEN, STDIO_SECRET):
        assert secret not in worker.output()
        assert secret not in json.dumps(events)
    assert '"mcp.connected"' in worker.output()


def test_a_stop_cancels_a_hung_mcp_tool_and_the_run_ends_stopped(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a run whose model calls a tool that never answers
    worker = bed.start_worker(f"agentrun.{namespace}.default")
    tag = uuid.uuid4().hex
    spec = agentrun(namespace, "hung")
    spec["spec"]["agent"].update(mcpServers=[stdio(tag)], script=[
        {"text": "Waiting.", "toolCalls": [{"name": "testkit__hang"}]},
        {"text": "never reached"},
    ])
    uid = bed.create(spec)["metadata"]["uid"]
    harness.wait_until(
        lambda: any(e["type"] == streams.TOOL_CALL for e in stream_events(bed.redis_url, uid)),
        60, "the model to call the hanging tool")
    # When the user stops the run
    bed.patch_spec(namespace, "hung", {"stop": True})
    # Then it ends Stopped, with the call never answered and one terminal event
    status = bed.wait_phase(namespace, "hung", "Stopped", "Succeeded", "Failed", timeout=60)["status"]
    assert (status["phase"], status["reason"]) == ("Stopped", "StopRequested"), status
    events = final_events(bed.redis_url, uid)
    assert [e["type"] for e in events if e["type"] in (streams.TOOL_CALL, streams.TOOL_RESULT)] == ["tool_call"]
    assert [e["status"] for e in events if streams.is_terminal(e)] == ["stopped"]
    # And the server process of the run is ended, and the worker goes on working
    harness.wait_until(lambda: not server_processes(tag), 30, "the stdio MCP server to exit")
    assert worker.alive()


def test_an_mcp_server_that_cannot_start_fails_the_run_naming_it(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    spec = agentrun(namespace, "nostart")
    spec["spec"]["agent"]["mcpServers"] = [{"name": "ghost", "transport": "stdio",
                                            "command": f"/nonexistent/{uuid.uuid4().hex}"}]
    bed.create(spec)
    status = bed.wait_phase(namespace, "nostart", "Failed", "Succeeded", timeout=60)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "MCPServerUnavailable"), status
    assert 'MCP server "ghost" (stdio) could not be started' in status["message"]


def test_a_stop_while_the_mcp_servers_start_ends_the_run_stopped(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a run whose stdio "server" never answers the handshake, on a worker that would wait an hour
    bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_MCP_CONNECT_TIMEOUT_SECONDS="3600")
    tag = uuid.uuid4().hex
    spec = agentrun(namespace, "starting")
    spec["spec"]["agent"]["mcpServers"] = [{"name": "silent", "transport": "stdio", "command": sys.executable,
                                            "args": ["-c", "import time; time.sleep(3600)", tag]}]
    uid = bed.create(spec)["metadata"]["uid"]
    harness.wait_until(lambda: server_processes(tag), 60, "the worker to spawn the server")
    # When the user stops it
    bed.patch_spec(namespace, "starting", {"stop": True})
    # Then it ends Stopped without a model turn, and the process is gone
    status = bed.wait_phase(namespace, "starting", "Stopped", "Succeeded", "Failed", timeout=60)["status"]
    assert (status["phase"], status["reason"], status["iterations"]) == ("Stopped", "StopRequested", 0), status
    events = final_events(bed.redis_url, uid)
    assert not [e for e in events if e["type"] == streams.ASSISTANT]
    harness.wait_until(lambda: not server_processes(tag), 30, "the server process to exit")


def test_the_model_sees_the_mcp_tools_schemas_and_the_prompt_section(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker on the OpenAI-compatible provider and a model that calls an MCP tool
    server = openai_server.OpenAIServer().start()
    try:
        bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
        server.reply(openai_server.tool_reply(("call_1", "testkit__add", '{"a": 20, "b": 22}'), text="Adding."),
                     openai_server.text_reply("It is ", "42."))
        spec = agentrun(namespace, "real-model")
        spec["spec"]["agent"] = {"model": "openai/test-model", "systemPrompt": "Be brief.",
                                 "mcpServers": [stdio(uuid.uuid4().hex)]}
        # When the run is applied
        bed.create(spec)
        status = bed.wait_phase(namespace, "real-model", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
    finally:
        server.stop()
    # Then it succeeded with the model's answer
    assert (status["phase"], status["result"]) == ("Succeeded", "It is 42."), status
    first, second = server.requests[0], server.requests[1]
    # And the model got the server's tools with their schemas, after the built-ins
    offered = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert list(offered)[:2] == ["complete", "ask"] and "testkit__add" in offered
    assert offered["testkit__add"]["description"] == "Add two integers."
    assert offered["testkit__add"]["parameters"]["properties"]["b"]["type"] == "integer"
    # And a system prompt that is the agent's own, then what each server offers
    system = first["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n## MCP servers")
    assert "### testkit\nTest tools for agentrun.\n- `testkit__echo`: Return the text unchanged." in system["content"]
    # And the tool's result came back to the model on its next turn
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
