"""Observability of a real worker process: its log lines, traces and error reporting.

Real kopf, a real Dramatiq worker process, RabbitMQ, Redis, PostgreSQL; the model is the
local Chat Completions server. The worker exports OpenTelemetry spans over OTLP/HTTP and
Langfuse observations (OTLP at ``/api/public/otel/v1/traces``) to a local receiver, and its
Sentry DSN points at the same receiver. A second worker runs with ``opentelemetry``,
``langfuse`` and ``sentry_sdk`` made unimportable: none of them is needed to run.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import harness
from tests.worker import openai_server, tracing_receiver

pytestmark = pytest.mark.e2e

KEY = "sk-observability-secret-never-logged"
LANGFUSE_SECRET = "sk-lf-observability-secret"
LANGFUSE_PATH = "/api/public/otel/v1/traces"

BLOCKER = '''
import sys

class _Blocked:
    """Makes the optional observability packages unimportable, as if not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("opentelemetry", "langfuse", "sentry_sdk"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture
def receiver() -> Iterator[tracing_receiver.Receiver]:
    srv = tracing_receiver.Receiver().start()
    yield srv
    srv.stop()


@pytest.fixture
def model() -> Iterator[openai_server.OpenAIServer]:
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def observability_env(receiver: tracing_receiver.Receiver, model: openai_server.OpenAIServer) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": model.base_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "LANGFUSE_PUBLIC_KEY": "pk-lf-e2e", "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET, "LANGFUSE_HOST": receiver.url,
        "LANGFUSE_FLUSH_INTERVAL": "0.2",
        "AGENTRUN_SENTRY_DSN": receiver.sentry_dsn(),
    }


def log_lines(proc: harness.Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def test_a_runs_log_lines_traces_and_observations_carry_its_identity(
    bed: harness.Bed, operator: Any, namespace: str, receiver: tracing_receiver.Receiver,
    model: openai_server.OpenAIServer,
) -> None:
    # Given a worker with OpenTelemetry, Langfuse and Sentry configured
    worker = bed.start_worker(f"agentrun.{namespace}.default", **observability_env(receiver, model))
    # And a model that fails once transiently (the provider logs a retry), calls a tool, then answers
    model.reply(openai_server.Error(503, "overloaded", headers={"Retry-After": "0"}),
                openai_server.tool_reply(("call_1", "search", '{"q": "x"}')),
                openai_server.text_reply("Done."))
    # When an AgentRun runs
    uid = bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                      "metadata": {"name": "observed", "namespace": namespace},
                      "spec": {"input": "hi", "agent": {"model": "openai/test-model"}}})["metadata"]["uid"]
    status = bed.wait_phase(namespace, "observed", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
    assert status["phase"] == "Succeeded", status
    thread_id = status["threadId"]

    # Then every log line of the run, the provider's retry included, names the run
    identity = {"run_id": uid, "thread_id": thread_id, "namespace": namespace, "name": "observed"}
    lines = harness.wait_until(lambda: [x for x in log_lines(worker) if x.get("run_id") == uid and
                                        x.get("event") == "run.finished"] and log_lines(worker), 20, "run.finished")
    events = {x["event"]: x for x in lines if x.get("run_id") == uid}
    assert {"run.started", "model.retry", "run.finished"} <= set(events), sorted(events)
    for event in ("run.started", "model.retry", "run.finished"):
        assert {k: events[event].get(k) for k in identity} == identity, events[event]

    # And OpenTelemetry got invoke_agent over chat and execute_tool spans, over OTLP/HTTP
    def otel_spans() -> list[dict[str, Any]]:
        return [s for s in receiver.spans("/v1/traces") if s["attributes"].get("gen_ai.conversation.id") == thread_id]

    spans = harness.wait_until(lambda: len(otel_spans()) >= 4 and otel_spans(), 30, "the worker's OTLP spans")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted((name, len(v)) for name, v in by_name.items()) == [
        ("chat test-model", 2), ("execute_tool search", 1), ("invoke_agent observed", 1)]
    root = by_name["invoke_agent observed"][0]
    assert root["resource"]["service.name"] == "agentrun-worker"
    assert root["attributes"]["agentrun.run_id"] == uid and root["attributes"]["gen_ai.provider.name"] == "openai"
    assert all(s["parent_span_id"] == root["span_id"] and s["trace_id"] == root["trace_id"]
               for s in spans if s is not root)

    # And Langfuse got the run as one trace whose id is the run's uid, session = thread
    def observations() -> list[dict[str, Any]]:
        return [s for s in receiver.spans(LANGFUSE_PATH) if s["trace_id"] == uid.replace("-", "")]

    found = harness.wait_until(lambda: len(observations()) >= 4 and observations(), 30, "Langfuse observations")
    assert sorted(s["attributes"]["langfuse.observation.type"] for s in found) == [
        "agent", "generation", "generation", "tool"]
    assert {s["attributes"]["session.id"] for s in found} == {thread_id}
    assert {s["attributes"]["user.id"] for s in found} == {namespace}

    # And a run that succeeded is no Sentry event; no secret is in any log line or trace
    assert receiver.events() == []
    assert KEY not in worker.output() and LANGFUSE_SECRET not in worker.output()
    assert all(KEY.encode() not in r.body for r in receiver.requests)


def test_a_worker_runs_without_any_observability_package_installed(
    bed: harness.Bed, operator: Any, namespace: str, receiver: tracing_receiver.Receiver,
    model: openai_server.OpenAIServer, tmp_path: pathlib.Path,
) -> None:
    # Given a worker where opentelemetry, langfuse and sentry_sdk cannot be imported, all configured
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = observability_env(receiver, model)
    env["PYTHONPATH"] = f"{tmp_path}:{bed.env()['PYTHONPATH']}" if bed.env().get("PYTHONPATH") else str(tmp_path)
    worker = bed.start_worker(f"agentrun.{namespace}.default", **env)
    model.reply(openai_server.tool_reply(("call_1", "complete", '{"text": "all done"}')))
    # When an AgentRun runs on it
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "bare", "namespace": namespace},
                "spec": {"input": "hi", "agent": {"model": "openai/test-model"}}})
    status = bed.wait_phase(namespace, "bare", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
    # Then it succeeds; the worker said which integrations it could not load, and sent nothing
    assert (status["phase"], status["result"]) == ("Succeeded", "all done"), status
    warnings = {x["event"]: x for x in log_lines(worker) if x.get("event", "").startswith("tracing.")}
    assert set(warnings) == {"tracing.otel_unavailable", "tracing.langfuse_unavailable",
                             "tracing.sentry_unavailable"}, warnings
    assert "Traceback" not in worker.output()
    assert receiver.requests == []


def test_a_database_lost_mid_run_is_reported_to_sentry_with_the_runs_tags(
    bed: harness.Bed, operator: Any, namespace: str, receiver: tracing_receiver.Receiver,
    model: openai_server.OpenAIServer, postgres_dsn: str,
) -> None:
    import asyncio
    import uuid

    import asyncpg

    from agentrun import store
    from tests.e2e.scenarios import stream_events

    # Given a worker on a database of its own, reporting to Sentry
    admin = postgres_dsn.rsplit("/", 1)[0] + "/postgres"
    name = f"agentrun_lost_{uuid.uuid4().hex[:8]}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    own = postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        asyncio.run(store.migrate_url(own))
        worker = bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_DATABASE_URL=own,
                                  **observability_env(receiver, model))
        # And a run streaming slowly
        words = " ".join(f"w{i}" for i in range(400))
        uid = bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                          "metadata": {"name": "lost-db", "namespace": namespace},
                          "spec": {"input": "hi", "agent": {"model": "scripted",
                                                            "script": [{"text": words, "chunkDelayMs": 10}]}}}
                         )["metadata"]["uid"]
        harness.wait_until(lambda: any(e["type"] == "assistant" for e in stream_events(bed.redis_url, uid)), 60,
                           "the run to stream")
        # When its database disappears under it
        asyncio.run(sql(f'DROP DATABASE "{name}" WITH (FORCE)'))
        # Then the infrastructure error reaches Sentry, tagged with the run
        events = harness.wait_until(receiver.events, 60, "a Sentry event")
        thread_id = bed.get_run(namespace, "lost-db")["status"]["threadId"]
        assert events[0]["tags"] == {"run_id": uid, "thread_id": thread_id, "namespace": namespace,
                                     "name": "lost-db", "attempt": "1"}, events[0]["tags"]
        assert all(e["tags"]["run_id"] == uid for e in events)
        assert events[0]["exception"]["values"], events[0]
        # And no secret travelled with it
        assert all(KEY.encode() not in env["raw"] and LANGFUSE_SECRET.encode() not in env["raw"]
                   for env in receiver.envelopes())
        worker.stop()
    finally:
        asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
