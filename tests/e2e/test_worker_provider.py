"""An AgentRun on the OpenAI-compatible provider, end to end.

Real kopf, a real Dramatiq worker process (credentials and base URL from its environment,
as a WorkerPool sets them), RabbitMQ, Redis, PostgreSQL; the model is the local server that
speaks the Chat Completions streaming wire format (``tests/worker/openai_server.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentrun import streams
from tests.e2e import harness
from tests.e2e.scenarios import final_events
from tests.worker import openai_server

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-secret-never-logged"


@pytest.fixture
def server() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def test_a_run_on_the_openai_provider_streams_text_and_tool_calls_and_succeeds(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given a worker whose environment points the "openai" prefix at the local server
    worker = bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY=KEY, OPENAI_BASE_URL=server.base_url)
    # And a model that first fails transiently, then calls a tool that does not exist, then completes
    server.reply(openai_server.Error(503, "overloaded", headers={"Retry-After": "0"}),
                 openai_server.tool_reply(("call_1", "search", '{"q": "agentrun"}'), text="Let me look."),
                 openai_server.text_reply("I cannot ", "search, ", "but hello!"))
    # When an AgentRun with model openai/<model> is applied
    uid = bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                      "metadata": {"name": "real", "namespace": namespace},
                      "spec": {"input": "Say hello", "agent": {"model": "openai/test-model",
                                                               "systemPrompt": "Be brief.",
                                                               "reasoningEffort": "low"}}})["metadata"]["uid"]
    status = bed.wait_phase(namespace, "real", "Succeeded", "Failed", "Stopped")["status"]
    # Then it succeeded with the model's answer and the provider's token counts
    assert (status["phase"], status["reason"], status["iterations"]) == ("Succeeded", "Completed", 2), status
    assert status["result"] == "I cannot search, but hello!"
    assert status["usage"] == {"inputTokens": 30, "outputTokens": 8, "totalTokens": 38}
    # And the requests carried the prompt, the tools, the effort, and the key from the environment
    first, second = server.requests[1], server.requests[2]
    assert first["model"] == "test-model" and first["reasoning_effort"] == "low"
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert [t["function"]["name"] for t in first["tools"]] == ["complete", "ask"]
    assert server.headers[1]["Authorization"] == f"Bearer {KEY}"
    assert second["messages"][-1]["role"] == "tool" and "no tool named 'search'" in second["messages"][-1]["content"]
    # And the stream has the text, the tool call and its error result, then one terminal event
    events = final_events(bed.redis_url, uid)
    text = "".join(e["delta"] for e in events if e["type"] == streams.ASSISTANT)
    assert text == "Let me look." + "I cannot search, but hello!"
    calls = [e for e in events if e["type"] in (streams.TOOL_CALL, streams.TOOL_RESULT)]
    assert [(e["type"], e["name"]) for e in calls] == [("tool_call", "search"), ("tool_result", "search")]
    assert json.loads(calls[0]["arguments"]) == {"q": "agentrun"} and calls[1]["error"] is True
    assert [e["status"] for e in events if streams.is_terminal(e)] == ["succeeded"]
    # And the thread stores the turns with the tool result; the key appears in no log line
    assert [m["role"] for m in bed.db_messages(uid)] == ["user", "assistant", "tool", "assistant"]
    assert KEY not in worker.output()
    assert '"model.retry"' in worker.output()
