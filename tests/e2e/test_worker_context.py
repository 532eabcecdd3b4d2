"""The prompt a model receives, end to end: trimmed to ``contextWindow`` on a long thread, and
image content parts carried from ``spec.inputParts`` to the request body and the thread.

Real kopf, a real Dramatiq worker, RabbitMQ, Redis, PostgreSQL; the model is the local server
that speaks the OpenAI Chat Completions wire format (tests/worker/openai_server.py) and
records every request body.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import harness
from tests.worker import openai_server

pytestmark = pytest.mark.e2e

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAA"
       "ABJRU5ErkJggg==")


@pytest.fixture
def server() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def run(namespace: str, name: str, thread: str, **spec: Any) -> dict[str, Any]:
    agent = {"model": "openai/test-model", "systemPrompt": "You are terse.", "contextWindow": 1024}
    agent.update(spec.pop("agent", {}))
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"threadId": thread, "agent": agent, **spec}}


def test_a_long_thread_reaches_the_model_trimmed_to_its_context_window(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given a worker and a thread of four exchanges of about 700 bytes each (a 1,024-token window
    # leaves 768 tokens, about 2,300 bytes, for the prompt)
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    for i in range(4):
        server.reply(openai_server.text_reply(f"answer {i} " + "b" * 340))
        bed.create(run(namespace, f"turn-{i}", thread, input=f"question {i} " + "a" * 340))
        assert bed.wait_phase(namespace, f"turn-{i}", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    # When a fifth run continues the thread
    server.reply(openai_server.text_reply("done"))
    bed.create(run(namespace, "turn-4", thread, input="question 4"))
    assert bed.wait_phase(namespace, "turn-4", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    # Then the model received the system prompt (with a note), and only the latest turns
    sent = server.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[0]["content"].startswith("You are terse.")
    assert "earlier messages of this conversation are left out" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": "question 4"}
    assert not any(str(m.get("content")).startswith("question 0") for m in sent)
    assert sum(len(str(m.get("content")).encode()) for m in sent) <= 3 * 768
    assert len(sent) < 1 + 9
    # And the thread itself kept every message
    assert len(bed.db_messages(thread)) == 10


def test_without_the_context_manager_the_whole_thread_is_sent(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        server.reply(openai_server.text_reply(f"answer {i} " + "b" * 700))
        bed.create(run(namespace, f"turn-{i}", thread, input=f"question {i} " + "a" * 700,
                       agent={"enableContextManager": False}))
        assert bed.wait_phase(namespace, f"turn-{i}", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    sent = server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[0] == {"role": "system", "content": "You are terse."}


def test_image_parts_reach_the_model_and_the_thread(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given a worker, and a run whose input is a text part and two image parts
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    parts = [{"type": "text", "text": "What is in these pictures?"},
             {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    server.reply(openai_server.text_reply("A pixel and a cat."))
    # When it runs
    bed.create(run(namespace, "look", thread, inputParts=parts, agent={"contextWindow": 128000}))
    status = bed.wait_phase(namespace, "look", "Succeeded", "Failed")["status"]
    assert (status["phase"], status["result"]) == ("Succeeded", "A pixel and a cat."), status
    # Then the request body carried the parts as OpenAI content parts, unchanged
    assert server.requests[-1]["messages"][-1] == {"role": "user", "content": parts}
    # And the thread stored them, so a later run on the thread sends them again
    stored = bed.db_messages(thread)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert json.loads(stored[0]["content"]) == parts
    server.reply(openai_server.text_reply("Still a cat."))
    bed.create(run(namespace, "again", thread, input="And now?", agent={"contextWindow": 128000}))
    assert bed.wait_phase(namespace, "again", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert server.requests[-1]["messages"][1] == {"role": "user", "content": parts}
