"""Traces of a run in OpenTelemetry, Langfuse and Sentry, with the real SDKs.

The agent loop runs in this process on the real ``openai`` library against the local Chat
Completions server, with the real Redis and PostgreSQL. OpenTelemetry spans go to the SDK's
in-memory exporter; the real Langfuse client exports to a local HTTP receiver (OTLP at
``/api/public/otel/v1/traces``, as it does to a Langfuse server); the real Sentry client
sends its envelopes to the same receiver through a DSN pointing at it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import sentry_sdk
import structlog
from agentrun_worker import agent, config, middleware, providers, tools, tracing
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentrun import store, streams
from tests.e2e import harness
from tests.worker import openai_server, tracing_receiver

KEY = "sk-tracing-test-key-never-sent"
LANGFUSE_SECRET = "sk-lf-never-in-a-log-line"
LANGFUSE_PATH = "/api/public/otel/v1/traces"


@pytest.fixture
def receiver() -> Iterator[tracing_receiver.Receiver]:
    srv = tracing_receiver.Receiver().start()
    yield srv
    srv.stop()


@pytest.fixture
def server() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
async def settings(server: openai_server.OpenAIServer, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[config.WorkerSettings]:
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    yield config.WorkerSettings(
        model_endpoints={"openai": config.Endpoint(base_url=server.base_url, api_key_env="TEST_LLM_KEY")},
        model_retry_base_seconds=0.01, model_max_retries=1)
    await providers.close()


@pytest.fixture
def exporter(receiver: tracing_receiver.Receiver) -> Iterator[InMemorySpanExporter]:
    """All three backends on: OpenTelemetry in memory, Langfuse and Sentry to the receiver."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.configure({
        "LANGFUSE_PUBLIC_KEY": f"pk-lf-{uuid.uuid4().hex}",  # the SDK keeps one client per key
        "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
        "LANGFUSE_HOST": receiver.url,
        "AGENTRUN_SENTRY_DSN": receiver.sentry_dsn(),
    }, tracer_provider=provider)
    yield memory
    tracing.shutdown()
    sentry_sdk.get_client().close()


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[store.Store]:
    await store.migrate_url(postgres_dsn)
    s = store.open_store(postgres_dsn, default_sqlite_path="unused.db")
    await s.connect()
    yield s
    await s.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _boom(args: dict[str, Any]) -> str:
    raise RuntimeError("the lookup service is down")


def bind_run(run_id: str) -> None:
    """What ``execution.execute`` binds for a run."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=run_id, thread_id=run_id, namespace="team-a", name="weather",
                                           attempt=1)


async def run_loop(db: store.Store, redis_client: aioredis.Redis, settings: config.WorkerSettings,
                   agent_spec: dict[str, Any], registry: tools.Registry | None = None,
                   loop_db: store.Store | None = None) -> tuple[str, agent.AgentLoop]:
    run_id = str(uuid.uuid4())
    bind_run(run_id)
    await db.ensure_thread(run_id, namespace="team-a")
    writer = streams.StreamWriter(redis_client, run_id)
    loop = agent.AgentLoop(provider=providers.for_agent(agent_spec, "weather in Paris?", settings), writer=writer,
                           db=loop_db or db, run_id=run_id, attempt=1, thread_id=run_id, agent=agent_spec,
                           history=[{"role": "user", "content": "weather in Paris?"}], registry=registry)
    try:
        await loop.run()
    finally:
        await writer.flush()
        await redis_client.delete(writer.key)
    return run_id, loop


async def test_a_run_is_one_trace_with_a_span_per_model_call_and_tool_call(
    exporter: InMemorySpanExporter, receiver: tracing_receiver.Receiver, server: openai_server.OpenAIServer,
    settings: config.WorkerSettings, db: store.Store, redis_client: aioredis.Redis,
) -> None:
    # Given a model that calls a failing tool, then completes
    lookup = tools.Tool("lookup", "Look something up.", {"type": "object"}, _boom)
    registry = tools.for_agent({"tools": ["lookup"]}, available={"lookup": lookup})
    server.reply(openai_server.tool_reply(("call_1", "lookup", '{"q": "paris"}')),
                 openai_server.tool_reply(("call_2", "complete", '{"text": "Sunny."}'), text="Done."))
    # When the run's loop runs
    run_id, loop = await run_loop(db, redis_client, settings, {"model": "openai/test-model",
                                                               "reasoningEffort": "low"}, registry)
    tracing.flush()
    outcome = loop.outcome
    assert (outcome.reason, outcome.result) == ("Completed", "Sunny.")

    # Then OpenTelemetry has invoke_agent over two chat spans and two execute_tool spans
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chats = [s for s in exporter.get_finished_spans() if s.name == "chat test-model"]
    assert sorted(spans) == ["chat test-model", "execute_tool complete", "execute_tool lookup",
                             "invoke_agent weather"] and len(chats) == 2
    root = spans["invoke_agent weather"]
    assert root.parent is None
    for child in [*chats, spans["execute_tool lookup"], spans["execute_tool complete"]]:
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
    # And the spans carry the GenAI semantic conventions
    assert {k: root.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.agent.name",
                                            "gen_ai.request.model", "gen_ai.conversation.id", "agentrun.run_id",
                                            "agentrun.namespace", "gen_ai.usage.input_tokens",
                                            "gen_ai.usage.output_tokens")} == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai", "gen_ai.agent.name": "weather",
        "gen_ai.request.model": "test-model", "gen_ai.conversation.id": run_id, "agentrun.run_id": run_id,
        "agentrun.namespace": "team-a", "gen_ai.usage.input_tokens": outcome.input_tokens,
        "gen_ai.usage.output_tokens": outcome.output_tokens}
    assert chats[0].kind == SpanKind.CLIENT
    assert chats[0].attributes["gen_ai.operation.name"] == "chat"
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == outcome.input_tokens
    # (the first reply is only a tool call; the second streams text: its first chunk is timed)
    assert "gen_ai.response.time_to_first_chunk" not in chats[0].attributes
    assert 0 < chats[1].attributes["gen_ai.response.time_to_first_chunk"] < (
        chats[1].end_time - chats[1].start_time) / 1e9
    assert chats[0].attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    failed_tool = spans["execute_tool lookup"]
    assert failed_tool.attributes["gen_ai.tool.name"] == "lookup"
    assert failed_tool.attributes["gen_ai.tool.call.id"] == "call_1"
    assert failed_tool.attributes["error.type"] == "ToolError"
    assert failed_tool.status.status_code == StatusCode.ERROR
    assert spans["execute_tool complete"].status.status_code == StatusCode.UNSET
    assert root.status.status_code == StatusCode.UNSET
    # And no message content is recorded unless asked for (the conventions' default)
    assert not any("gen_ai.input.messages" in (s.attributes or {}) for s in exporter.get_finished_spans())

    # And Langfuse got one trace (its id is the run's uid) with an agent, two generations, two tools
    observations = harness.wait_until(lambda: [s for s in receiver.spans(LANGFUSE_PATH)
                                               if s["trace_id"] == run_id.replace("-", "")], 10, "Langfuse spans")
    harness.wait_until(lambda: len([s for s in receiver.spans(LANGFUSE_PATH)
                                     if s["trace_id"] == run_id.replace("-", "")]) >= 5, 10, "all Langfuse spans")
    observations = [s for s in receiver.spans(LANGFUSE_PATH) if s["trace_id"] == run_id.replace("-", "")]
    kinds = sorted((s["attributes"]["langfuse.observation.type"], s["name"]) for s in observations)
    assert kinds == [("agent", "weather"), ("generation", "chat test-model"), ("generation", "chat test-model"),
                     ("tool", "complete"), ("tool", "lookup")]
    by_type = {s["attributes"]["langfuse.observation.type"]: s for s in observations}
    run_span = by_type["agent"]
    assert all(s["parent_span_id"] == run_span["span_id"] for s in observations if s is not run_span)
    # And the session is the thread, the user the namespace, on every observation of the trace
    for s in observations:
        assert s["attributes"]["session.id"] == run_id
        assert s["attributes"]["user.id"] == "team-a"
    assert run_span["attributes"]["langfuse.trace.name"] == "weather"
    generation = next(s for s in observations if "langfuse.observation.completion_start_time" in s["attributes"])
    assert generation["attributes"]["langfuse.observation.model.name"] == "test-model"
    assert json.loads(generation["attributes"]["langfuse.observation.model.parameters"]) == {
        "reasoning_effort": "low"}
    assert '"input": ' in generation["attributes"]["langfuse.observation.usage_details"]
    assert "weather in Paris?" in generation["attributes"]["langfuse.observation.input"]
    assert "Sunny." in run_span["attributes"]["langfuse.observation.output"]
    lookup_span = next(s for s in observations if s["name"] == "lookup")
    assert lookup_span["attributes"]["langfuse.observation.level"] == "ERROR"
    # And the Langfuse credentials travel only in the Authorization header, as the SDK sends them
    assert all(LANGFUSE_SECRET not in str(s["attributes"]) for s in observations)
    # And a run that ended well sent nothing to Sentry
    assert receiver.events() == []


async def test_an_infrastructure_error_goes_to_sentry_with_the_runs_tags_but_an_agents_failure_does_not(
    exporter: InMemorySpanExporter, receiver: tracing_receiver.Receiver, server: openai_server.OpenAIServer,
    settings: config.WorkerSettings, db: store.Store, redis_client: aioredis.Redis, postgres_dsn: str,
) -> None:
    # Given runs that fail as agents do: over budget, and a model that refuses the request
    server.reply(openai_server.tool_reply(("call_1", "nothing", "{}"), text="a long answer " * 5))
    with pytest.raises(agent.BudgetExceeded):
        await run_loop(db, redis_client, settings, {"model": "openai/test-model", "maxTokens": 5,
                                                    "maxIterations": 3})
    server.reply(openai_server.Error(400, f"this model does not take that from key {KEY}", "invalid_request_error"))
    with pytest.raises(providers.base.ProviderError):
        await run_loop(db, redis_client, settings, {"model": "openai/test-model"})
    # And a run whose database went away under it (an infrastructure error)
    gone = store.open_store(postgres_dsn, default_sqlite_path="unused.db")
    await gone.connect()
    await gone.close()
    server.reply(openai_server.text_reply("fine"))
    with pytest.raises(Exception) as caught:  # noqa: PT011 (whatever the closed store raises)
        await run_loop(db, redis_client, settings, {"model": "openai/test-model"}, loop_db=gone)
    assert not hasattr(caught.value, "reason")
    failed_run = structlog.contextvars.get_contextvars()["run_id"]
    tracing.flush()

    # Then Sentry got exactly one event: the infrastructure error, tagged with the run
    events = harness.wait_until(receiver.events, 10, "the Sentry event")
    tracing.flush()
    assert len(receiver.events()) == 1, [e.get("exception") for e in receiver.events()]
    event = events[0]
    assert event["tags"] == {"run_id": failed_run, "thread_id": failed_run, "namespace": "team-a",
                             "name": "weather", "attempt": "1"}
    assert event["exception"]["values"][-1]["type"] == type(caught.value).__name__
    # And the agents' own failures are marked on their spans, not sent as exceptions
    roots = [s for s in exporter.get_finished_spans() if s.name.startswith("invoke_agent")]
    assert [(s.status.status_code, s.attributes["error.type"]) for s in roots] == [
        (StatusCode.ERROR, "BudgetExceeded"), (StatusCode.ERROR, "ModelError"),
        (StatusCode.ERROR, type(caught.value).__qualname__)]
    chat_errors = [s.attributes.get("error.type") for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert "ModelError" in chat_errors
    # And an error text that echoes a secret is recorded on the spans without it
    refused = [s for s in exporter.get_finished_spans() if s.attributes.get("error.type") == "ModelError"]
    assert refused and all("from key ***" in s.status.description for s in refused)
    recorded = [str(dict(e.attributes or {})) for s in exporter.get_finished_spans() for e in s.events]
    assert recorded and not any(KEY in text for text in recorded)


async def test_an_error_escaping_the_actor_is_reported_once_and_without_secrets(
    exporter: InMemorySpanExporter, receiver: tracing_receiver.Receiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker whose environment holds secrets
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run_id = str(uuid.uuid4())
    bind_run(run_id)
    # When an infrastructure error naming them escapes the actor
    error = ConnectionError(f"cannot reach redis://default:hunter2secret@10.0.0.1:6379/0 with {KEY}")
    with pytest.raises(ConnectionError) as escaped, tracing.identified():
        raise error
    bind_run(str(uuid.uuid4()))  # the middleware runs where another run's context may be bound
    reporting = middleware.ErrorReporting()
    for _ in range(2):  # reported once, however often it is handed on
        reporting.after_process_message(None, None, exception=escaped.value)  # type: ignore[arg-type]
    # And an agent's own failure escapes too
    with pytest.raises(agent.BudgetExceeded) as failed, tracing.identified():
        raise agent.BudgetExceeded("over budget")
    reporting.after_process_message(None, None, exception=failed.value)  # type: ignore[arg-type]
    tracing.flush()
    # Then one event arrived, tagged with the run, and neither the password nor the key was sent
    events = harness.wait_until(receiver.events, 10, "the Sentry event")
    assert len(events) == 1 and events[0]["tags"]["run_id"] == run_id
    assert events[0]["exception"]["values"][-1]["value"] == (
        "cannot reach redis://default:***@10.0.0.1:6379/0 with ***")
    raw = b"".join(e["raw"] for e in receiver.envelopes())
    assert b"hunter2secret" not in raw and KEY.encode() not in raw


async def test_a_stopped_run_marks_its_spans_cancelled_not_failed(
    exporter: InMemorySpanExporter, server: openai_server.OpenAIServer, settings: config.WorkerSettings,
    db: store.Store, redis_client: aioredis.Redis, receiver: tracing_receiver.Receiver,
) -> None:
    server.reply(openai_server.Stream(openai_server.text_reply(*["word "] * 300), delay=0.02))
    task = asyncio.get_running_loop().create_task(
        run_loop(db, redis_client, settings, {"model": "openai/test-model"}))
    harness_wait = 0
    while not server.requests and harness_wait < 500:
        await asyncio.sleep(0.02)
        harness_wait += 1
    await asyncio.sleep(0.1)
    task.cancel()  # what a stop request does to the loop's task
    with pytest.raises(asyncio.CancelledError):
        await task
    tracing.flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("invoke_agent weather", "chat test-model"):
        assert spans[name].attributes["agentrun.cancelled"] is True
        assert spans[name].status.status_code == StatusCode.UNSET
    assert receiver.events() == []


async def test_message_content_is_recorded_when_the_convention_variable_asks(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, db: store.Store,
    redis_client: aioredis.Redis,
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.configure({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}, tracer_provider=provider)
    try:
        server.reply(openai_server.text_reply("Sunny."))
        await run_loop(db, redis_client, settings, {"model": "openai/test-model"})
    finally:
        tracing.shutdown()
    chat = next(s for s in memory.get_finished_spans() if s.name == "chat test-model")
    assert "weather in Paris?" in chat.attributes["gen_ai.input.messages"]
    assert "Sunny." in chat.attributes["gen_ai.output.messages"]
