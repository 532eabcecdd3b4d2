"""AgentWorkflows end to end: real kopf, real Dramatiq worker processes, RabbitMQ, Redis, PostgreSQL.

The operator resolves ``workflowRef`` into the broker message (or fails the run); the worker
runs the steps through the agent loop. Steps on the scripted model without a script echo
their prompt ("You said: <prompt>"), which proves what the template substitution produced;
the agent executor's model is the local Chat Completions server, which records what the
model was shown (``tests/worker/openai_server.py``).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agentrun import binaries, streams
from tests.e2e import harness
from tests.e2e.scenarios import final_events, local_env, stream_events
from tests.worker import openai_server

pytestmark = pytest.mark.e2e

INPUT = "agentrun"
ROOT = pathlib.Path(__file__).resolve().parents[2]


def workflow(namespace: str, name: str, *steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"agent": {"model": "scripted"}, "steps": list(steps)}
    body.update(spec)
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentWorkflow",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def run_of(namespace: str, name: str, workflow_name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"input": INPUT, "workflowRef": {"name": workflow_name}, **spec}}


def step_events(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["step"], e["status"]) for e in events if e["type"] == "step"]


def warning_posted(bed: harness.Bed, namespace: str, name: str, reason: str) -> bool:
    return any(e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
               and e.get("type") == "Warning" for e in bed.emulator.list("v1", "events", namespace))


@pytest.fixture
def server() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def test_deterministic_steps_run_in_order_each_using_the_outputs_before_it(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker and a three-step workflow whose later prompts use earlier outputs
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create(workflow(
        namespace, "article",
        {"name": "research", "prompt": "Research {{input}}."},
        {"name": "draft", "prompt": "Draft from [{{ steps.research.output }}]."},
        {"name": "review", "prompt": "Review [{{steps.draft.output}}] for {{input}}.",
         "script": [{"text": "Checked it."}, {"text": "Looks good."}]},
    ))
    # When a run refers to it
    uid = bed.create(run_of(namespace, "write", "article"))["metadata"]["uid"]
    status = bed.wait_phase(namespace, "write", "Succeeded", "Failed", "Stopped")["status"]
    # Then it succeeded with the last step's output, iterations summed over the steps
    assert (status["phase"], status["reason"]) == ("Succeeded", "Completed"), status
    assert status["result"] == "Looks good."
    assert status["iterations"] == 1 + 1 + 2
    # And the stream shows the steps in order, each started then completed
    events = final_events(bed.redis_url, uid)
    assert step_events(events) == [("research", "started"), ("research", "completed"), ("draft", "started"),
                                   ("draft", "completed"), ("review", "started"), ("review", "completed")]
    # And each prompt was rendered from the input and the outputs before it (the scripted model echoes)
    research = "You said: Research agentrun."
    draft = f"You said: Draft from [{research}]."
    started = {e["step"]: e for e in events if e["type"] == "step" and e["status"] == "started"}
    completed = {e["step"]: e for e in events if e["type"] == "step" and e["status"] == "completed"}
    assert started["draft"]["prompt"] == f"Draft from [{research}]."
    assert started["review"]["prompt"] == f"Review [{draft}] for agentrun."
    assert (completed["research"]["output"], completed["draft"]["output"]) == (research, draft)
    assert [started[s]["index"] for s in ("research", "draft", "review")] == [0, 1, 2]
    # And every event inside a step says which step, and the text streamed is the steps' outputs
    inside = [e for e in events if e["type"] in (streams.ASSISTANT, streams.MESSAGE)]
    assert {e.get("step") for e in inside} == {"research", "draft", "review"}
    text = {s: "".join(e["delta"] for e in events if e["type"] == streams.ASSISTANT and e.get("step") == s)
            for s in ("research", "draft")}
    assert text == {"research": research, "draft": draft}
    # And the usage on the resource is the sum of the steps' usage, and one terminal event ends the stream
    usage = [completed[s]["usage"] for s in ("research", "draft", "review")]
    assert status["usage"] == {k: sum(u[k] for u in usage) for k in ("inputTokens", "outputTokens", "totalTokens")}
    assert status["usage"]["totalTokens"] > 0
    assert [e["status"] for e in events if streams.is_terminal(e)] == ["succeeded"] and streams.is_terminal(events[-1])
    # And the thread holds the input, then each step's prompt and turns
    messages = bed.db_messages(uid)
    assert [(m["role"], json.loads(m["content"]) if isinstance(m["content"], str) else m["content"])
            for m in messages][:3] == [("user", INPUT), ("user", "Research agentrun."), ("assistant", research)]
    assert [m["role"] for m in messages] == (["user"] + ["user", "assistant", "step"] * 2
                                             + ["user", "assistant", "assistant", "step"])
    row = bed.db_row(uid)
    assert row is not None and row["status"] == "Succeeded" and row["result"] == "Looks good."


def test_a_failing_step_fails_the_run_naming_the_step(bed: harness.Bed, operator: Any, namespace: str) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create(workflow(namespace, "flaky", {"name": "one", "prompt": "{{input}}"},
                        {"name": "two", "prompt": "{{steps.one.output}}", "script": [{"fail": "model overloaded"}]},
                        {"name": "three", "prompt": "never"}))
    uid = bed.create(run_of(namespace, "flaky", "flaky"))["metadata"]["uid"]
    status = bed.wait_phase(namespace, "flaky", "Succeeded", "Failed", "Stopped")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "StepFailed"), status
    assert status["message"] == 'step "two" (2 of 3) failed: ModelError: model overloaded'
    events = final_events(bed.redis_url, uid)
    assert step_events(events) == [("one", "started"), ("one", "completed"), ("two", "started"), ("two", "failed")]
    failed = next(e for e in events if e["type"] == "step" and e["status"] == "failed")
    assert (failed["reason"], failed["message"]) == ("ModelError", "model overloaded")
    assert events[-1]["status"] == "failed" and events[-1]["reason"] == "StepFailed"


def test_a_missing_workflow_fails_the_run_with_an_event(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given no AgentWorkflow "ghost" (the operator waits AGENTRUN_POOL_WAIT_SECONDS=1 for it)
    bed.create(run_of(namespace, "orphan", "ghost"))
    # Then the operator fails the run, says which workflow, and posts a Warning Event
    status = bed.wait_phase(namespace, "orphan", "Failed", "Succeeded", timeout=30)["status"]
    assert status["reason"] == "WorkflowNotFound"
    assert status["message"] == f'AgentWorkflow "ghost" not found in namespace "{namespace}"'
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("False", "WorkflowNotFound")
    harness.wait_until(lambda: warning_posted(bed, namespace, "orphan", "WorkflowNotFound"), 10,
                       "a Warning Event WorkflowNotFound")


def test_a_prompt_using_a_later_step_is_refused_at_dispatch(bed: harness.Bed, operator: Any, namespace: str) -> None:
    bed.create(workflow(namespace, "backwards", {"name": "one", "prompt": "{{steps.two.output}}"},
                        {"name": "two", "prompt": "{{input}}"}))
    bed.create(run_of(namespace, "backwards", "backwards"))
    status = bed.wait_phase(namespace, "backwards", "Failed", "Succeeded", timeout=30)["status"]
    assert status["reason"] == "WorkflowInvalid"
    assert status["message"] == ('AgentWorkflow "backwards": step "one": {{steps.two.output}} is not the output '
                                 "of an earlier step")
    harness.wait_until(lambda: warning_posted(bed, namespace, "backwards", "WorkflowInvalid"), 10,
                       "a Warning Event WorkflowInvalid")


# 30 turns of 8 words, 40 ms a word: about 10 s of streaming, far longer than the test needs.
SLOW = [{"text": " ".join(f"w{turn}-{i}" for i in range(8)), "chunkDelayMs": 40} for turn in range(30)]


def test_a_stop_mid_step_ends_the_workflow_stopped(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given a workflow whose second step streams for a long time
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create(workflow(namespace, "long", {"name": "quick", "prompt": "{{input}}"},
                        {"name": "slow", "prompt": "{{steps.quick.output}}", "script": SLOW},
                        {"name": "after", "prompt": "never"}))
    uid = bed.create(run_of(namespace, "long", "long"))["metadata"]["uid"]
    harness.wait_until(
        lambda: sum(1 for e in stream_events(bed.redis_url, uid)
                    if e["type"] == streams.ASSISTANT and e.get("step") == "slow") >= 3,
        30, "the second step to stream a few words")
    # When the user stops the run
    bed.patch_spec(namespace, "long", {"stop": True})
    # Then it ends Stopped mid-step: the step started and never completed, the third never started
    status = bed.wait_phase(namespace, "long", "Stopped", "Succeeded", "Failed")["status"]
    assert (status["phase"], status["reason"]) == ("Stopped", "StopRequested"), status
    assert 2 <= status["iterations"] < 1 + len(SLOW)
    events = final_events(bed.redis_url, uid)
    assert step_events(events) == [("quick", "started"), ("quick", "completed"), ("slow", "started")]
    terminal = [e for e in events if streams.is_terminal(e)]
    assert len(terminal) == 1 and events[-1] is terminal[0] and terminal[0]["status"] == "stopped"
    assert terminal[0]["iterations"] == status["iterations"]


def test_ask_in_a_step_ends_the_run_waiting_for_the_user(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given a workflow whose second step runs on a model that asks the user a question
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    server.reply(openai_server.tool_reply(("q1", "ask", '{"text": "Which language?"}')))
    bed.create(workflow(namespace, "translate", {"name": "draft", "prompt": "{{input}}"},
                        {"name": "translate", "prompt": "Translate {{steps.draft.output}}", "model": "openai/m"},
                        {"name": "publish", "prompt": "never"}))
    uid = bed.create(run_of(namespace, "asks", "translate"))["metadata"]["uid"]
    # Then the run succeeds AskedUser with the question, as an agent run that asks
    status = bed.wait_phase(namespace, "asks", "Succeeded", "Failed", "Stopped")["status"]
    assert (status["phase"], status["reason"], status["result"]) == ("Succeeded", "AskedUser", "Which language?")
    events = final_events(bed.redis_url, uid)
    assert step_events(events) == [("draft", "started"), ("draft", "completed"), ("translate", "started"),
                                   ("translate", "completed")]
    asked = [e for e in events if e["type"] == "step" and e["status"] == "completed"][-1]
    assert asked["reason"] == "AskedUser"
    # And the step's model got the rendered prompt
    assert server.requests[0]["messages"][-1] == {"role": "user", "content": "Translate You said: agentrun"}


def test_the_agent_executor_lets_the_model_choose_the_steps(
    bed: harness.Bed, operator: Any, namespace: str, server: openai_server.OpenAIServer
) -> None:
    # Given an agent-driven workflow: the orchestrating model on the local server, steps echoing
    bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
    bed.create(workflow(
        namespace, "choose",
        {"name": "research", "description": "Find facts.", "prompt": "Research {{input}}", "model": "scripted"},
        {"name": "summarize", "description": "Sum up.", "prompt": "Summarize {{steps.research.output}}",
         "model": "scripted"},
        {"name": "translate", "description": "Translate.", "prompt": "Translate {{input}}", "model": "scripted"},
        executor="agent", description="Answer questions about a topic.",
        agent={"model": "openai/test-model", "systemPrompt": "Be brief."},
    ))
    # And a model that first runs a step too early, then research, then summarize, then answers
    server.reply(openai_server.tool_reply(("c1", "run_step", '{"step": "summarize"}')),
                 openai_server.tool_reply(("c2", "run_step", '{"step": "research", "instructions": "Be thorough."}')),
                 openai_server.tool_reply(("c3", "run_step", '{"step": "summarize"}')),
                 openai_server.text_reply("All ", "done."))
    uid = bed.create(run_of(namespace, "chooser", "choose"))["metadata"]["uid"]
    status = bed.wait_phase(namespace, "chooser", "Succeeded", "Failed", "Stopped")["status"]
    # Then the run succeeded with the model's answer; iterations count its turns and the steps'
    assert (status["phase"], status["reason"], status["result"]) == ("Succeeded", "Completed", "All done."), status
    assert status["iterations"] == 4 + 2
    # And the model was shown the workflow and a run_step tool over its steps
    first = server.requests[0]
    system = first["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert 'workflow "choose"' in system["content"] and "Answer questions about a topic." in system["content"]
    assert "- summarize: Sum up. (uses the output of: research)" in system["content"]
    assert first["messages"][1:] == [{"role": "user", "content": INPUT}]
    run_step = next(t["function"] for t in first["tools"] if t["function"]["name"] == "run_step")
    assert run_step["parameters"]["properties"]["step"]["enum"] == ["research", "summarize", "translate"]
    # And each tool result was what the chosen step produced (or why it could not run yet)
    results = [r["messages"][-1] for r in server.requests[1:]]
    assert all(m["role"] == "tool" for m in results)
    assert "has not run yet" in results[0]["content"]
    research = "You said: Research agentrun\n\nBe thorough."
    assert results[1]["content"] == research
    assert results[2]["content"] == f"You said: Summarize {research}"
    # And the stream shows the steps the model chose, in its order, inside its run_step calls
    events = final_events(bed.redis_url, uid)
    assert step_events(events) == [("research", "started"), ("research", "completed"), ("summarize", "started"),
                                   ("summarize", "completed")]
    kinds = [(e["type"], e.get("name") or e.get("step")) for e in events
             if e["type"] in (streams.TOOL_CALL, streams.TOOL_RESULT, "step")]
    assert kinds[:4] == [("tool_call", "run_step"), ("tool_result", "run_step"), ("tool_call", "run_step"),
                         ("step", "research")]
    assert [e["status"] for e in events if streams.is_terminal(e)] == ["succeeded"]


def test_the_example_workflow_runs_in_agentrun_dev_with_kubectl(tmp_path: pathlib.Path) -> None:
    # Given the local stack, started as a newcomer starts it
    env = local_env(tmp_path)
    api_port, redis_port = harness.free_port(), harness.free_port()
    dev = harness.Proc("dev", [str(harness.BIN / "agentrun"), "dev", "--api-port", str(api_port),
                               "--redis-port", str(redis_port)], env, tmp_path).start()
    try:
        harness.wait_until(lambda: "is up" in dev.output() or not dev.alive(), 60, "agentrun dev", 0.1)
        assert dev.alive(), dev.output()
        env.update(KUBECONFIG=str(tmp_path / "state" / "kubeconfig"),
                   AGENTRUN_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        kubectl = str(binaries.kubectl())
        # When the example is applied with kubectl
        applied = subprocess.run([kubectl, "apply", "-f", str(ROOT / "examples" / "workflow.yaml")], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        assert "agentworkflow.agentrun.io/article created" in applied.stdout
        # Then agentrun logs shows the steps in order with their text, and the run's end
        logs = subprocess.run([str(harness.BIN / "agentrun"), "logs", "write-article", "-f"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert logs.returncode == 0, logs.stderr
        lines = [line for line in logs.stdout.splitlines() if line.startswith("▸ step")]
        assert lines == ["▸ step outline started", "▸ step outline completed reason=Completed",
                         "▸ step draft started", "▸ step draft completed reason=Completed",
                         "▸ step review started", "▸ step review completed reason=Completed"]
        assert ("You said: Write the article about Kubernetes operators from this outline: "
                "1. What it is. 2. How it works. 3. Why it matters.") in logs.stdout
        assert "Succeeded reason=Completed iterations=3" in logs.stdout
        # And kubectl lists the workflow with its printer columns (short name awf)
        table = subprocess.run([kubectl, "get", "awf", "-o", "wide"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "EXECUTOR", "MODEL", "DESCRIPTION", "AGE"]
        assert row.split()[:3] == ["article", "deterministic", "scripted"]
        assert "Write a short article on a topic, in three steps." in row
        # And the run's wide table names the workflow it ran
        runs = subprocess.run([kubectl, "get", "ar", "-o", "wide"], env=env, capture_output=True, text=True,
                              timeout=60)
        header, row = runs.stdout.splitlines()[:2]
        assert header.split()[-2:] == ["WORKFLOW", "AGE"]
        assert row.split()[:2] == ["write-article", "Succeeded"] and row.split()[-2] == "article"
    finally:
        if dev.popen is not None and dev.alive():
            dev.popen.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.popen.wait(20)
        dev.stop()


# 12 turns of 6 words, 40 ms a word: about 3 s, so SIGTERM lands inside the step even on a busy machine.
TURNS = [{"text": " ".join(f"t{turn}w{i}" for i in range(6)), "chunkDelayMs": 40} for turn in range(12)]


def test_a_workflow_handed_back_at_shutdown_resumes_after_its_completed_steps(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker with a short grace period, inside the second step of a workflow
    queue = f"agentrun.{namespace}.default"
    first = bed.start_worker(queue, AGENTRUN_SHUTDOWN_GRACE_SECONDS="0.2")
    bed.create(workflow(namespace, "resumable", {"name": "one", "prompt": "{{input}}"},
                        {"name": "two", "prompt": "{{steps.one.output}}", "script": TURNS},
                        {"name": "three", "prompt": "after {{steps.one.output}}"}))
    uid = bed.create(run_of(namespace, "resumable", "resumable"))["metadata"]["uid"]
    harness.wait_until(
        lambda: sum(1 for e in stream_events(bed.redis_url, uid)
                    if e["type"] == streams.MESSAGE and e.get("step") == "two") >= 1,
        30, "a completed turn of the second step")
    # When the worker is sent SIGTERM, and another worker starts
    first.stop()
    assert '"run.handed_back"' in first.output(), first.output()[-3000:]
    second = bed.start_worker(queue)
    # Then the run succeeds once, at attempt 1, without running the first step again
    status = bed.wait_phase(namespace, "resumable", "Succeeded", "Failed", "Stopped")["status"]
    assert (status["phase"], status["reason"], status["attempt"]) == ("Succeeded", "Completed", 1), status
    assert status["result"] == "You said: after You said: agentrun"
    assert status["iterations"] == 1 + len(TURNS) + 1
    assert '"workflow.resumed"' in second.output()
    events = final_events(bed.redis_url, uid)
    assert [(e["step"], e["run"], e["status"]) for e in events if e["type"] == "step"] == [
        ("one", 1, "started"), ("one", 1, "completed"), ("two", 1, "started"),
        ("two", 2, "started"), ("two", 2, "completed"), ("three", 1, "started"), ("three", 1, "completed")]
    assert [e["status"] for e in events if e["type"] == streams.STATUS] == ["running", "requeued", "running",
                                                                          "succeeded"]


def test_workflow_steps_call_the_mcp_tools_of_the_workflow_s_agent(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a workflow whose agent has a stdio MCP server, and two steps that call its tools
    from tests.e2e.scenarios import server_processes, stdio

    tag = f"wf-{namespace}"
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create(workflow(
        namespace, "tooling",
        {"name": "sum", "prompt": "Add for {{input}}.",
         "script": [{"text": "Adding.",
                     "toolCalls": [{"name": "testkit__add", "arguments": json.dumps({"a": 2, "b": 3})}]},
                    {"text": "sum={{toolResults}}"}]},
        {"name": "say", "prompt": "Say [{{steps.sum.output}}].",
         "script": [{"text": "Echo.",
                     "toolCalls": [{"name": "testkit__echo", "arguments": json.dumps({"text": "hi"})}]},
                    {"text": "said={{toolResults}}"}]},
        agent={"model": "scripted", "mcpServers": [stdio(tag)]},
    ))
    # When a run refers to it
    uid = bed.create(run_of(namespace, "tools", "tooling"))["metadata"]["uid"]
    status = bed.wait_phase(namespace, "tools", "Succeeded", "Failed", "Stopped")["status"]
    # Then both steps called their MCP tool and saw the result
    assert (status["phase"], status["reason"]) == ("Succeeded", "Completed"), status
    events = final_events(bed.redis_url, uid)
    results = [(e["step"], e["name"], bool(e.get("error"))) for e in events if e["type"] == streams.TOOL_RESULT]
    assert results == [("sum", "testkit__add", False), ("say", "testkit__echo", False)], results
    assert status["result"] == "said=echo: hi", status["result"]
    # And the server is gone once the run ended
    harness.wait_until(lambda: not server_processes(tag), 20, "the MCP server to exit with the run")
