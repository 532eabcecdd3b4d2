"""The OpenAI-compatible provider against a local server speaking the streaming wire format.

The provider runs the real ``openai`` library over real HTTP against ``openai_server``;
the agent-loop tests also write to the real Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from agentrun_worker import agent, config, providers, tools
from agentrun_worker.providers import base, chat_completions

from agentrun import store, streams
from tests.worker import openai_server

KEY = "sk-test-not-a-real-key"


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
        model_endpoints={"openai": config.Endpoint(base_url=server.base_url, api_key_env="TEST_LLM_KEY"),
                         "vllm": config.Endpoint(base_url=server.base_url, api_key_env="TEST_LLM_KEY",
                                                 thinking="chat_template_kwargs"),
                         "plain": config.Endpoint(base_url=server.base_url, api_key_env="TEST_LLM_KEY",
                                                  thinking="none")},
        model_retry_base_seconds=0.01, model_max_retries=2,
    )
    await providers.close()


def provider(settings: config.WorkerSettings, model: str = "openai/test-model", **agent: Any) -> base.Provider:
    return providers.for_agent({"model": model, **agent}, "hi", settings)


USER = [{"role": "user", "content": "hi"}]


async def test_text_deltas_stream_in_order_with_usage_and_the_key_from_the_environment(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    # Given a model that streams three pieces of text
    server.reply(openai_server.text_reply("Hel", "lo ", "there", prompt_tokens=7))
    deltas: list[str] = []
    # When a turn runs
    turn = await provider(settings).turn(USER, iteration=1, on_delta=deltas.append)
    # Then every delta arrived in order and the turn completes the agent with the provider's usage
    assert deltas == ["Hel", "lo ", "there"]
    assert (turn.text, turn.finish, turn.tool_calls) == ("Hello there", "complete", [])
    assert (turn.input_tokens, turn.output_tokens) == (7, 3)
    # And the request streamed, asked for usage, named the model without its prefix, sent the key
    request = server.requests[0]
    assert request["model"] == "test-model" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["messages"] == USER
    assert "tools" not in request and "reasoning_effort" not in request
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"


async def test_tool_call_deltas_are_assembled_into_whole_calls(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    server.reply(openai_server.tool_reply(("call_a", "lookup", '{"q": "weather in Paris"}'),
                                          ("call_b", "complete", '{"text": "done"}'), pieces=4))
    schemas = tools.for_agent({}).schemas()
    turn = await provider(settings).turn(USER, iteration=1, on_delta=lambda _: None, tools=schemas)
    assert turn.tool_calls == [base.ToolCall("call_a", "lookup", '{"q": "weather in Paris"}'),
                               base.ToolCall("call_b", "complete", '{"text": "done"}')]
    assert turn.finish == "continue"
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == ["complete", "ask"]


@pytest.mark.parametrize(("agent_spec", "model", "expected"), [
    ({"enableThinking": True}, "openai/o4", {"reasoning_effort": "medium"}),
    ({"reasoningEffort": "high"}, "openai/o4", {"reasoning_effort": "high"}),
    ({"enableThinking": True}, "vllm/qwen3", {"chat_template_kwargs": {"enable_thinking": True}}),
    ({"reasoningEffort": "low"}, "vllm/qwen3", {"chat_template_kwargs": {"enable_thinking": True}}),
    ({"enableThinking": True, "reasoningEffort": "high"}, "plain/llama", {}),
    ({"enableThinking": False}, "vllm/qwen3", {}),
    ({}, "openai/o4", {}),
])
async def test_thinking_settings_map_to_the_endpoints_parameters(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, agent_spec: dict[str, Any], model: str,
    expected: dict[str, Any],
) -> None:
    server.reply(openai_server.text_reply("ok"))
    await provider(settings, model, **agent_spec).turn(USER, iteration=1, on_delta=lambda _: None)
    sent = {k: v for k, v in server.requests[0].items() if k in ("reasoning_effort", "chat_template_kwargs")}
    assert sent == expected


async def test_transient_errors_are_retried_with_backoff_and_the_turn_succeeds(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    # Given a rate limit (with Retry-After) and a server error before a good answer
    server.reply(openai_server.Error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "0"}),
                 openai_server.Error(503, "The server is overloaded"),
                 openai_server.text_reply("fine"))
    # When a turn runs, Then it is retried twice and succeeds
    turn = await provider(settings).turn(USER, iteration=1, on_delta=lambda _: None)
    assert turn.text == "fine"
    assert len(server.requests) == 3


async def test_a_connection_lost_after_text_was_streamed_is_not_retried(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    # Given a provider that drops the connection mid-answer (transient), and a good answer queued
    server.reply(openai_server.Stream(openai_server.text_reply("Hel", "lo ", "the")[:3], cut=True),
                 openai_server.text_reply("never sent"))
    deltas: list[str] = []
    # When a turn runs, Then it fails at once: a retry would stream "Hel" to readers a second time
    with pytest.raises(base.ProviderError, match="Connection error"):
        await provider(settings).turn(USER, iteration=1, on_delta=deltas.append)
    assert deltas == ["Hel", "lo "]
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_errors_that_a_retry_cannot_fix_fail_at_once_with_the_providers_message(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, status: int
) -> None:
    server.reply(openai_server.Error(status, f"bad thing {status}", "invalid_request_error"),
                 openai_server.text_reply("never sent"))
    with pytest.raises(base.ProviderError) as caught:
        await provider(settings).turn(USER, iteration=1, on_delta=lambda _: None)
    assert str(caught.value) == f"HTTP {status} from the model provider: bad thing {status}"
    assert caught.value.reason == "ModelError"
    assert len(server.requests) == 1


async def test_retries_end_after_the_configured_number(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    server.reply(*[openai_server.Error(500, "boom")] * 3)
    with pytest.raises(base.ProviderError, match="HTTP 500 from the model provider: boom"):
        await provider(settings).turn(USER, iteration=1, on_delta=lambda _: None)
    assert len(server.requests) == 1 + settings.model_max_retries


async def test_a_missing_key_or_unknown_prefix_is_reported_without_any_request(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_LLM_KEY")
    with pytest.raises(base.ProviderUnavailable, match="TEST_LLM_KEY"):
        provider(settings)
    with pytest.raises(base.ProviderUnavailable, match='"nowhere/x"'):
        provider(settings, "nowhere/x")
    assert server.requests == []
    assert chat_completions.split_model("openai/gpt-4o") == ("openai", "gpt-4o")


# -- the agent loop with tools, on the real Redis and PostgreSQL ----------------------------------


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
    raise RuntimeError(f"the lookup service is down (asked {args.get('q')!r})")


async def run_loop(settings: config.WorkerSettings, db: store.Store, redis_client: aioredis.Redis,
                   registry: tools.Registry) -> tuple[agent.Outcome, list[dict[str, Any]], str]:
    run_id = str(uuid.uuid4())
    await db.ensure_thread(run_id, namespace="test")
    writer = streams.StreamWriter(redis_client, run_id)
    loop = agent.AgentLoop(provider=provider(settings), writer=writer, db=db, run_id=run_id, attempt=1,
                           thread_id=run_id, agent={"model": "openai/test-model", "maxIterations": 5},
                           history=list(USER), registry=registry)
    outcome = await loop.run()
    await writer.flush()
    events = [e for _, e in await streams.read_all(redis_client, run_id)]
    await redis_client.delete(writer.key)
    return outcome, events, run_id


async def test_a_failing_tool_becomes_an_error_the_model_sees_and_complete_ends_the_run(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, db: store.Store,
    redis_client: aioredis.Redis,
) -> None:
    # Given a tool that raises, and a model that calls it, then calls complete
    lookup = tools.Tool("lookup", "Look something up.", {"type": "object"}, _boom)
    registry = tools.for_agent({"tools": ["lookup"]}, available={"lookup": lookup})
    server.reply(openai_server.tool_reply(("call_1", "lookup", '{"q": "paris"}')),
                 openai_server.tool_reply(("call_2", "complete", '{"text": "Could not look it up."}'),
                                          text="Sorry."))
    # When the loop runs
    outcome, events, run_id = await run_loop(settings, db, redis_client, registry)
    # Then the run completed with the complete tool's text, after two turns
    assert (outcome.reason, outcome.iterations, outcome.result) == ("Completed", 2, "Could not look it up.")
    assert outcome.usage == {"inputTokens": 40, "outputTokens": 10, "totalTokens": 50}
    # And the model saw the tool's error as the result of its call
    second = server.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_1"
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == "call_1"
    assert second[-1]["content"].startswith("error: RuntimeError: the lookup service is down")
    # And calls and results were streamed in order
    tool_events = [(e["type"], e["name"], e.get("error")) for e in events
                   if e["type"] in (streams.TOOL_CALL, streams.TOOL_RESULT)]
    assert tool_events == [("tool_call", "lookup", None), ("tool_result", "lookup", True),
                           ("tool_call", "complete", None), ("tool_result", "complete", False)]
    assert json.loads(next(e for e in events if e["type"] == streams.TOOL_CALL)["arguments"]) == {"q": "paris"}
    # And the thread stores each turn with its tool results, ready for the next run
    messages = await db.list_messages(run_id)
    assert [m.role for m in messages] == ["assistant", "tool", "assistant", "tool"]
    assert messages[1].content["tool_call_id"] == "call_1"


async def test_ask_ends_the_run_asking_the_user_and_an_unknown_tool_is_an_error_result(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, db: store.Store,
    redis_client: aioredis.Redis,
) -> None:
    server.reply(openai_server.tool_reply(("c1", "teleport", "{}")),
                 openai_server.tool_reply(("c2", "ask", '{"text": "Which city?"}')))
    outcome, events, _ = await run_loop(settings, db, redis_client, tools.for_agent({}))
    assert (outcome.reason, outcome.result) == ("AskedUser", "Which city?")
    results = [e for e in events if e["type"] == streams.TOOL_RESULT]
    assert results[0]["error"] is True and "no tool named 'teleport'" in results[0]["content"]
    assert server.requests[1]["messages"][-1]["content"] == results[0]["content"]


async def test_a_stop_cancels_the_model_stream_mid_answer(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings
) -> None:
    # Given a model streaming slowly
    server.reply(openai_server.Stream(openai_server.text_reply(*["word "] * 200), delay=0.02))
    deltas: list[str] = []
    task = asyncio.get_running_loop().create_task(
        provider(settings).turn(USER, iteration=1, on_delta=deltas.append))
    while len(deltas) < 3:
        await asyncio.sleep(0.01)
    # When its task is cancelled (what a stop request does), Then the stream ends at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= len(deltas) < 200


async def test_cancelling_the_loop_cancels_a_running_tool(
    server: openai_server.OpenAIServer, settings: config.WorkerSettings, db: store.Store,
    redis_client: aioredis.Redis,
) -> None:
    # Given a model that calls a tool which runs until it is cancelled
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever(args: dict[str, Any]) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    slow = tools.Tool("slow", "Takes forever.", {"type": "object"}, wait_forever)
    server.reply(openai_server.tool_reply(("call_s", "slow", "{}")))
    run_id = str(uuid.uuid4())
    writer = streams.StreamWriter(redis_client, run_id)
    loop = agent.AgentLoop(provider=provider(settings), writer=writer, db=db, run_id=run_id, attempt=1,
                           thread_id=run_id, agent={"model": "openai/test-model"}, history=list(USER),
                           registry=tools.for_agent({"tools": ["slow"]}, available={"slow": slow}))
    task = asyncio.get_running_loop().create_task(loop.run())
    await started.wait()
    # When the loop's task is cancelled (a stop request), Then the tool is cancelled with it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    await writer.flush()
    events = [e["type"] for _, e in await streams.read_all(redis_client, run_id)]
    assert events[-1] == streams.TOOL_CALL  # called, and no result: it never finished
    await redis_client.delete(writer.key)
