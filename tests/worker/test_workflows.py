"""The workflow executors in process, on a real Redis stream and a real SQLite thread store.

The end-to-end behaviour (operator resolution, stream, stop, ask, the agent executor) is in
tests/e2e/test_workflows.py; this covers the rules that are cheaper to pin here: step
overrides, the run-wide token budget, steps that do not complete, refusals before any model
call, and what the agent executor tells the model.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from agentrun_worker import agent, config, providers, workflows

from agentrun import message, store, streams
from tests.worker import openai_server


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
async def db(tmp_path: pathlib.Path) -> AsyncIterator[store.Store]:
    s = store.open_store(None, default_sqlite_path=str(tmp_path / "agentrun.db"))
    await s.connect()
    await s.migrate()
    yield s
    await s.close()


def run_message(workflow: dict[str, Any] | None, uid: str) -> message.RunMessage:
    spec: dict[str, Any] = {"input": "topic", "workflowRef": {"name": "w"}}
    if workflow is not None:
        spec["workflow"] = {"name": "w", **workflow}
    return message.RunMessage(uid=uid, namespace="ns", name="r", generation=1, attempt=1, thread_id=uid,
                              queued_at="2025-01-01T00:00:00Z", spec=spec)


async def start(client: aioredis.Redis, db: store.Store, workflow: dict[str, Any] | None,
                settings: config.WorkerSettings | None = None, uid: str | None = None,
                ) -> tuple[workflows.Executor, streams.StreamWriter, str]:
    if uid is None:
        uid = str(uuid.uuid4())
        await db.ensure_thread(uid, namespace="ns")
    writer = streams.StreamWriter(client, uid)
    executor = await workflows.executor(run_message(workflow, uid), user_input="topic", writer=writer, db=db,
                                        settings=settings or config.WorkerSettings())
    return executor, writer, uid


def test_a_step_overrides_the_workflow_agent() -> None:
    base = {"model": "scripted", "script": [{"text": "x"}], "tools": ["a"], "maxIterations": 5, "maxTokens": 9}
    assert workflows.step_agent(base, {"name": "s", "prompt": "p", "tools": [], "maxIterations": 2}) == {
        "model": "scripted", "script": [{"text": "x"}], "tools": [], "maxIterations": 2, "maxTokens": 9}
    # a new model does not inherit the workflow's script; a step's own script wins
    assert "script" not in workflows.step_agent(base, {"name": "s", "prompt": "p", "model": "openai/m"})
    assert workflows.step_agent(base, {"name": "s", "prompt": "p", "script": [{"text": "y"}]})["script"] == [
        {"text": "y"}]


async def test_the_token_budget_is_the_whole_runs(client: aioredis.Redis, db: store.Store) -> None:
    # Given a budget that the first step's words already use up (word counts are the scripted tokens)
    steps = [{"name": "one", "prompt": "{{input}} and more words here"}, {"name": "two", "prompt": "again"}]
    executor, writer, uid = await start(client, db, {"agent": {"model": "scripted", "maxTokens": 8}, "steps": steps})
    # When it runs, the second step is not started and the run fails BudgetExceeded, naming the step
    with pytest.raises(agent.BudgetExceeded, match=r'step "two" \(2 of 2\): the run used \d+ tokens'):
        await executor.run()
    await writer.flush()
    assert executor.outcome.iterations == 1 and executor.outcome.input_tokens + executor.outcome.output_tokens >= 8
    events = [e for _, e in await streams.read_all(client, uid)]
    assert [(e["step"], e["status"]) for e in events if e["type"] == "step"] == [("one", "started"),
                                                                                ("one", "completed")]


async def test_a_step_that_runs_out_of_iterations_fails_the_run(client: aioredis.Redis, db: store.Store) -> None:
    script = [{"text": "thinking"}, {"text": "still thinking"}, {"text": "done"}]
    steps = [{"name": "slow", "prompt": "{{input}}", "maxIterations": 2}]
    executor, _, _ = await start(client, db, {"agent": {"model": "scripted", "script": script}, "steps": steps})
    with pytest.raises(workflows.StepFailed, match=r'step "slow" \(1 of 1\) reached maxIterations=2 without'):
        await executor.run()
    assert executor.outcome.iterations == 2


@pytest.mark.parametrize(("workflow", "reason", "text"), [
    (None, "WorkflowNotFound", 'AgentWorkflow "w" was not resolved when the run was queued'),
    ({"agent": {"model": "scripted"}, "steps": [{"name": "a", "prompt": "{{steps.b.output}}"},
                                                {"name": "b", "prompt": "x"}]},
     "WorkflowInvalid", 'step "a": {{steps.b.output}} is not the output of an earlier step'),
    ({"agent": {"model": "scripted"}, "steps": [{"name": "a", "prompt": "x"}, {"name": "b", "prompt": "x",
                                                                               "model": "nowhere/m"}]},
     "ProviderUnavailable", 'step "b": no provider for model "nowhere/m"'),
    ({"agent": {"model": "scripted", "tools": ["nope"]}, "steps": [{"name": "a", "prompt": "x", "tools": []},
                                                                   {"name": "b", "prompt": "x"}]},
     "ToolNotFound", "step \"b\": spec.agent.tools: no tool or MCP server named 'nope'"),
])
async def test_a_workflow_that_cannot_run_is_refused_before_any_model_call(
    client: aioredis.Redis, db: store.Store, workflow: dict[str, Any] | None, reason: str, text: str
) -> None:
    with pytest.raises(workflows.Refused) as caught:
        await start(client, db, workflow)
    assert caught.value.reason == reason
    assert text in str(caught.value)


async def test_the_agent_executor_describes_the_workflow_and_offers_run_step(
    client: aioredis.Redis, db: store.Store
) -> None:
    steps = [{"name": "find", "description": "Find sources.", "prompt": "{{input}}"},
             {"name": "write", "prompt": "{{steps.find.output}} {{input}} {{steps.find.output}}"}]
    executor, _, _ = await start(client, db, {"executor": "agent", "description": "Write about a topic.",
                                              "agent": {"model": "scripted"}, "steps": steps})
    assert isinstance(executor, workflows.AgentDriven)
    assert executor.describe().splitlines()[:2] == ['You carry out the workflow "w".', "Write about a topic."]
    assert executor.describe().splitlines()[-3:] == ["Steps:", "- find: Find sources.",
                                                     "- write: (no description) (uses the output of: find)"]
    # A step that needs an output not there yet, an unknown step and bad arguments are errors the model reads
    assert (await executor.call_step('{"step": "write"}')).content.startswith("error: cannot run step 'write' yet")
    assert (await executor.call_step('{"step": "other"}')).content == "error: no step named 'other'; steps: find, write"
    assert (await executor.call_step("[1]")).error
    # A step that runs returns its output (the scripted model echoes its prompt plus the instructions)
    result = await executor.call_step('{"step": "find", "instructions": "Only recent ones."}')
    assert (result.content, result.error, result.ends_run) == ("You said: topic\n\nOnly recent ones.", False, None)
    assert executor.outputs == {"find": result.content}


async def test_an_interrupted_workflow_resumes_after_its_completed_steps(
    client: aioredis.Redis, db: store.Store
) -> None:
    # Given a workflow interrupted in its second step (as a hand-back at shutdown cancels it)
    slow = [{"text": f"word{i} " * 4, "chunkDelayMs": 20} for i in range(20)]
    workflow = {"agent": {"model": "scripted"},
                "steps": [{"name": "one", "prompt": "{{input}}"},
                          {"name": "two", "prompt": "{{steps.one.output}}", "script": slow},
                          {"name": "three", "prompt": "{{steps.two.output}} / {{steps.one.output}}"}]}
    first, writer, uid = await start(client, db, workflow)
    task = asyncio.get_running_loop().create_task(first.run())
    while not any(m.role == "assistant" and "/step/two.1/" in m.id for m in await db.list_messages(uid)):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.flush()
    # When the next delivery of the same attempt runs it
    second = await workflows.executor(run_message(workflow, uid), user_input="topic", writer=writer, db=db,
                                      settings=config.WorkerSettings())
    outcome = await second.run()
    await writer.flush()
    # Then step one is not run again (its output comes from its record), step two runs again as run 2
    events = [e for _, e in await streams.read_all(client, uid)]
    assert [(e["step"], e["run"], e["status"]) for e in events if e["type"] == "step"] == [
        ("one", 1, "started"), ("one", 1, "completed"), ("two", 1, "started"),
        ("two", 2, "started"), ("two", 2, "completed"), ("three", 1, "started"), ("three", 1, "completed")]
    assert outcome.result == f"You said: {slow[-1]['text']} / You said: topic"
    assert (outcome.reason, outcome.iterations) == ("Completed", 1 + len(slow) + 1)
    # And the thread keeps both runs of step two apart, and one record per completed step
    ids = [m.id.removeprefix(f"{uid}/1/") for m in await db.list_messages(uid)]
    assert [i for i in ids if i.endswith("/output")] == ["step/one.1/output", "step/two.2/output",
                                                          "step/three.1/output"]
    assert "step/two.1/prompt" in ids and "step/two.2/prompt" in ids


@pytest.fixture
async def model(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[openai_server.OpenAIServer,
                                                                        config.WorkerSettings]]:
    """The local Chat Completions server as the model prefix "wf" (its own client, not a cached one)."""
    server = openai_server.OpenAIServer().start()
    monkeypatch.setenv("WF_TEST_KEY", "sk-test")
    yield server, config.WorkerSettings(
        model_endpoints={"wf": config.Endpoint(base_url=server.base_url, api_key_env="WF_TEST_KEY")})
    await providers.close()
    server.stop()


async def test_the_agent_executor_resumes_after_its_stored_turns(
    client: aioredis.Redis, db: store.Store, model: tuple[openai_server.OpenAIServer, config.WorkerSettings]
) -> None:
    server, settings = model
    slow = [{"text": f"word{i} " * 4, "chunkDelayMs": 20} for i in range(20)]
    workflow = {"executor": "agent", "agent": {"model": "wf/orchestrator"},
                "steps": [{"name": "one", "prompt": "{{input}}", "model": "scripted"},
                          {"name": "two", "prompt": "{{steps.one.output}}", "model": "scripted", "script": slow}]}
    # Given an orchestrator whose first turn ran step one and whose second is inside step two
    server.reply(openai_server.tool_reply(("c1", "run_step", '{"step": "one"}')),
                 openai_server.tool_reply(("c2", "run_step", '{"step": "two"}')))
    first, writer, uid = await start(client, db, workflow, settings)
    task = asyncio.get_running_loop().create_task(first.run())
    while not any("/step/two.1/" in m.id and m.role == "assistant" for m in await db.list_messages(uid)):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.flush()
    # When the next delivery runs it, with a model that runs step two again and then answers
    server.reply(openai_server.tool_reply(("c3", "run_step", '{"step": "two"}')),
                 openai_server.text_reply("Finished."))
    second, writer, _ = await start(client, db, workflow, settings, uid=uid)
    outcome = await second.run()
    await writer.flush()
    # Then the orchestrator went on after its stored first turn, which the model saw with its result
    resumed = server.requests[2]["messages"]
    assert [m["role"] for m in resumed] == ["system", "user", "assistant", "tool"]
    assert resumed[2]["tool_calls"][0]["id"] == "c1" and resumed[3]["content"] == "You said: topic"
    assert (outcome.result, outcome.reason) == ("Finished.", "Completed")
    # the orchestrator: 1 stored turn (the interrupted one is not stored) + 2 after; steps: one (1), two (20)
    assert outcome.iterations == 1 + 2 + 1 + len(slow)
    events = [e for _, e in await streams.read_all(client, uid)]
    assert [(e["step"], e["run"], e["status"]) for e in events if e["type"] == "step"] == [
        ("one", 1, "started"), ("one", 1, "completed"), ("two", 1, "started"), ("two", 2, "started"),
        ("two", 2, "completed")]


async def test_in_the_agent_executor_a_step_that_does_not_complete_is_an_error_and_gives_no_output(
    client: aioredis.Redis, db: store.Store
) -> None:
    steps = [{"name": "long", "prompt": "{{input}}", "maxIterations": 1, "script": [{"text": "a"}, {"text": "b"}]},
             {"name": "next", "prompt": "{{steps.long.output}}"}]
    executor, _, _ = await start(client, db, {"executor": "agent", "agent": {"model": "scripted"}, "steps": steps})
    assert isinstance(executor, workflows.AgentDriven)
    result = await executor.call_step('{"step": "long"}')
    assert result.error and result.content == ("error: step 'long' reached its maxIterations without completing; "
                                               "its last reply: a")
    assert executor.outputs == {}
    assert (await executor.call_step('{"step": "next"}')).content.startswith("error: cannot run step 'next' yet")


async def test_a_workflow_reads_the_whole_thread_page_by_page(client: aioredis.Redis, db: store.Store) -> None:
    # Given a thread longer than one page of the store (1,000 messages)
    uid = str(uuid.uuid4())
    await db.ensure_thread(uid, namespace="ns")
    earlier = str(uuid.uuid4())
    for i in range(1005):
        await db.add_message(uid, "user", f"m{i}", run_id=earlier, message_id=f"{earlier}/{i}")
    # When a workflow run starts on it
    executor, _, _ = await start(client, db, {"agent": {"model": "scripted"},
                                              "steps": [{"name": "one", "prompt": "{{input}}"}]}, uid=uid)
    # Then its steps see every message, the latest included, as a plain agent run would
    history = executor._ctx.history
    assert len(history) == 1005
    assert history[-1] == {"role": "user", "content": "m1004"}
