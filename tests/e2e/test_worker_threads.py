"""Threads and budgets end to end: real kopf, a real Dramatiq worker, RabbitMQ, Redis, PostgreSQL.

A second AgentRun on the same ``threadId`` continues the conversation (this is how the
answer to ``ask`` resumes it); ``maxTokens`` ends a run over budget with ``BudgetExceeded``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.scenarios import agentrun
from tests.worker import openai_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def run_on_thread(namespace: str, name: str, thread: str, text: str) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"threadId": thread, "input": text, "agent": {"model": "openai/test-model"}}}


def test_the_answer_to_ask_continues_the_conversation_on_the_same_thread(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given a worker, and a first run whose agent asks the user a question
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    server.reply(openai_server.tool_reply(("call_ask", "ask", '{"text": "Which city?"}')))
    bed.create(run_on_thread(namespace, "plan", thread, "Plan a trip"))
    first = bed.wait_phase(namespace, "plan", "Succeeded", "Failed", "Stopped")["status"]
    assert (first["phase"], first["reason"], first["result"], first["threadId"]) == (
        "Succeeded", "AskedUser", "Which city?", thread)
    # When the user answers with a second run on the same thread
    server.reply(openai_server.text_reply("Paris it is."))
    bed.create(run_on_thread(namespace, "answer", thread, "Paris"))
    second = bed.wait_phase(namespace, "answer", "Succeeded", "Failed", "Stopped")["status"]
    # Then the model saw the whole conversation: the question it asked, and the answer
    assert (second["phase"], second["reason"], second["result"]) == ("Succeeded", "Completed", "Paris it is.")
    sent = server.requests[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[0]["content"] == "Plan a trip" and sent[-1]["content"] == "Paris"
    assert sent[1]["tool_calls"][0]["function"]["name"] == "ask"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_ask", "content": "Which city?"}
    # And the thread holds both runs' messages in order
    assert [m["role"] for m in bed.db_messages(thread)] == ["user", "assistant", "tool", "user", "assistant"]


def test_a_run_over_its_token_budget_fails_with_budget_exceeded(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a scripted agent of three turns and a budget its first turn already spends
    bed.start_worker(f"agentrun.{namespace}.default")
    spec = agentrun(namespace, "budget")
    spec["spec"]["agent"]["maxTokens"] = 5
    uid = bed.create(spec)["metadata"]["uid"]
    # When it runs, Then it fails before the second model call with BudgetExceeded everywhere
    status = bed.wait_phase(namespace, "budget", "Succeeded", "Failed", "Stopped")["status"]
    assert (status["phase"], status["reason"], status["iterations"]) == ("Failed", "BudgetExceeded", 1), status
    assert "maxTokens=5" in status["message"]
    assert status["usage"]["totalTokens"] >= 5
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"]) == ("Failed", "BudgetExceeded")
