"""The contract's one home for a run: reasons, phase groups, timestamps, views, the message
builder and the one ``finish`` (its order on a real Redis and SQLite, the API a recorder)."""

from __future__ import annotations

import ast
import copy
import datetime
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentrun import ending, keys, message, phases, reasons, store, streams, timestamps, views


def test_reasons_are_written_as_the_text_they_always_were() -> None:
    assert reasons.Reason.WORKER_LOST == "WorkerLost" and str(reasons.Reason.WORKER_LOST) == "WorkerLost"
    assert reasons.Reason.MCP_SERVER_UNAVAILABLE == "MCPServerUnavailable"
    assert f"{reasons.Reason.STOP_REQUESTED}" == "StopRequested"
    assert all(r.value[0].isupper() and " " not in r.value for r in reasons.Reason)

    class Boom(Exception):
        reason = reasons.Reason.MODEL_ERROR

    assert reasons.of(Boom()) == "ModelError" and reasons.of(ValueError()) == "AgentError"


@pytest.mark.parametrize(("phase", "terminal", "active", "unstarted"), [
    ("Pending", False, False, True), ("Queued", False, False, True), ("Running", False, True, False),
    ("Stopping", False, True, False), ("Succeeded", True, False, False), ("Failed", True, False, False),
    ("Stopped", True, False, False), (None, False, False, False), ("", False, False, False),
])
def test_phase_groups(phase: str | None, terminal: bool, active: bool, unstarted: bool) -> None:
    assert (phases.is_terminal(phase), phases.is_active(phase), phases.is_unstarted(phase)) == (
        terminal, active, unstarted)


def test_the_phase_groups_cover_every_phase_once() -> None:
    groups = [phases.TERMINAL, phases.ACTIVE, phases.UNSTARTED]
    assert set().union(*groups) == set(phases.Phase) and sum(map(len, groups)) == len(phases.Phase)


@pytest.mark.parametrize(("text", "epoch"), [
    ("2025-01-01T00:00:00Z", 1735689600.0), ("2025-01-01T00:00:00.500000Z", 1735689600.5),
    ("2025-01-01T01:00:00+01:00", 1735689600.0), (None, None), ("", None),
])
def test_timestamps_parse_one_way(text: str | None, epoch: float | None) -> None:
    assert timestamps.epoch(text) == epoch
    assert timestamps.age_seconds(text, 1735689610.0) == (None if epoch is None else 1735689610.0 - epoch)


def test_timestamps_are_written_as_kubernetes_writes_them() -> None:
    assert datetime.datetime.strptime(timestamps.now(), "%Y-%m-%dT%H:%M:%SZ")
    parsed = timestamps.parse(timestamps.now_precise())
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize(("spec", "status", "thread"), [
    ({}, {}, "uid-1"),
    ({"threadId": "t"}, {}, "t"),
    ({"threadId": "t"}, {"threadId": "recorded"}, "recorded"),
    ({}, {"threadId": "recorded"}, "recorded"),
])
def test_the_thread_id_rule(spec: dict[str, Any], status: dict[str, Any], thread: str) -> None:
    run = views.AgentRun({"metadata": {"uid": "uid-1"}, "spec": spec, "status": status})
    assert run.thread_id == thread


def test_a_run_view_gives_the_defaults() -> None:
    run = views.AgentRun({"metadata": {"uid": "u", "namespace": "ns", "name": "n"}})
    assert (run.spec.pool, run.spec.max_attempts, run.spec.timeout_seconds, run.spec.ttl_after_finished) == (
        "default", 3, None, None)
    assert (run.status.phase, run.status.attempt, run.generation, run.spec.stop) == (None, 0, 1, False)
    spec = views.RunSpec({"workerPool": "gpu", "timeoutSeconds": 600, "maxAttempts": 1, "stop": True,
                          "agent": {"model": "m"}, "workflowRef": {"name": "w"}})
    assert (spec.pool, spec.timeout_seconds, spec.max_attempts, spec.stop, spec.model, spec.workflow_name) == (
        "gpu", 600, 1, True, "m", "w")
    assert str(spec.timeout_seconds) == "600" and views.RunSpec({"timeoutSeconds": 0.5}).timeout_seconds == 0.5


def test_a_pool_view_gives_the_crd_defaults() -> None:
    pool = views.PoolSpec({})
    assert (pool.min_replicas, pool.max_replicas, pool.runs_per_replica, pool.autoscaling_mode) == (
        1, 10, 8, "operator")
    assert views.PoolSpec({"autoscaling": {"mode": "keda"}, "maxReplicas": 3}).autoscaling_mode == "keda"


def test_every_publisher_builds_the_same_message() -> None:
    body = {"metadata": {"uid": "u", "namespace": "ns", "name": "n", "generation": 4},
            "spec": {"input": "hi", "workerPool": "gpu"}, "status": {"threadId": "t"}}
    run = views.AgentRun(body)
    built = message.for_run(run, attempt=2, queued_at="2025-01-01T00:00:00Z")
    assert built == message.RunMessage(uid="u", namespace="ns", name="n", generation=4, attempt=2, thread_id="t",
                                       queued_at="2025-01-01T00:00:00Z", spec={"input": "hi", "workerPool": "gpu"})
    assert message.for_run(run, attempt=2, queued_at="x", spec={"resolved": True}).spec == {"resolved": True}
    assert message.queue_of(run) == "agentrun.ns.gpu"


# -- finish ----------------------------------------------------------------------------------


class OrderedApi:
    """The AgentRun on a recording API; a status patch notes what the database and the stream
    held at that moment."""

    def __init__(self, obj: dict[str, Any], db: store.Store, client: aioredis.Redis) -> None:
        self.obj, self.db, self.client = obj, db, client
        self.seen_at_patch: list[tuple[str | None, int]] = []

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    async def patch(self, resource: Any, name: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        record = await self.db.get_run(self.obj["metadata"]["uid"])
        stored = await streams.read_all(self.client, self.obj["metadata"]["uid"])
        self.seen_at_patch.append((record.status if record else None, len(stored)))
        self.obj["status"].update(patch["status"])
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)


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


def live_run(phase: str = "Running") -> tuple[dict[str, Any], ending.RunRef]:
    uid = str(uuid.uuid4())
    obj = {"metadata": {"uid": uid, "namespace": "ns", "name": f"r-{uid[:8]}", "resourceVersion": "1",
                        "generation": 1},
           "spec": {}, "status": {"phase": phase, "attempt": 1}}
    return obj, ending.RunRef(uid=uid, namespace="ns", name=obj["metadata"]["name"], attempt=1, thread_id=uid)


def identity(ref: ending.RunRef) -> store.RunRecord:
    return store.RunRecord(id=ref.uid, namespace=ref.namespace, name=ref.name, thread_id=ref.thread_id,
                           status="Queued", attempt=ref.attempt)


async def test_finish_writes_database_then_resource_then_stream_then_ttls(
        client: aioredis.Redis, db: store.Store) -> None:
    # Given a running run with an event in flight
    obj, ref = live_run()
    api = OrderedApi(obj, db, client)
    writer = streams.StreamWriter(client, ref.uid)
    writer.emit({"type": streams.ASSISTANT, "delta": "hi"})
    # When it ends Stopped with its usage so far
    result = ending.Ending(phase=phases.Phase.STOPPED, reason=reasons.Reason.STOP_REQUESTED, message="stopped",
                           iterations=2, usage={"inputTokens": 3, "outputTokens": 4, "totalTokens": 7})
    moved = await ending.finish(ref, result, api=api, db=db, writer=writer, redis=client,  # type: ignore[arg-type]
                                key_ttl_seconds=60, record=identity(ref))
    # Then the database had the end, and the stream only the event in flight, when the resource was written
    assert api.seen_at_patch == [("Stopped", 1)]
    assert moved is not None and moved["status"]["phase"] == "Stopped"
    status = obj["status"]
    assert (status["reason"], status["iterations"], status["usage"]["totalTokens"]) == ("StopRequested", 2, 7)
    assert status["conditions"][0]["type"] == "Complete" and status["conditions"][0]["status"] == "False"
    # And the terminal event comes last, then the keys expire
    events = [e for _, e in await streams.read_all(client, ref.uid)]
    assert events[-1] == {"type": "status", "status": "stopped", "reason": "StopRequested", "message": "stopped",
                          "attempt": 1, "iterations": 2, "usage": result.usage}
    assert 0 < await client.ttl(keys.stream(ref.uid)) <= 60
    record = await db.get_run(ref.uid)
    assert record is not None and (record.status, record.reason, record.error) == ("Stopped", "StopRequested",
                                                                                   "stopped")


async def test_finish_refused_by_the_lifecycle_streams_nothing(client: aioredis.Redis, db: store.Store) -> None:
    # Given a run that already ended
    obj, ref = live_run("Succeeded")
    api = OrderedApi(obj, db, client)
    # When the operator would end it Failed
    moved = await ending.finish(ref, ending.Ending(phase=phases.Phase.FAILED, reason=reasons.Reason.WORKER_LOST),
                                api=api, db=None, writer=streams.StreamWriter(client, ref.uid),  # type: ignore[arg-type]
                                redis=client, key_ttl_seconds=60)
    # Then nothing moves and no second terminal event is written
    assert moved is None and obj["status"]["phase"] == "Succeeded"
    assert await streams.read_all(client, ref.uid) == []


async def test_finish_refuses_a_phase_that_is_not_an_end(client: aioredis.Redis) -> None:
    _, ref = live_run()
    with pytest.raises(ValueError, match="terminal"):
        await ending.finish(ref, ending.Ending(phase=phases.Phase.QUEUED, reason=reasons.Reason.QUEUED),
                            api=None, db=None, writer=None, redis=None, key_ttl_seconds=60)  # type: ignore[arg-type]


def test_a_run_ends_in_one_place() -> None:
    # Every write of a phase to the resource outside agentrun.ending names a phase that is not an end
    # (Pending while dispatch waits for a pool or workflow, Queued, Running)
    root = pathlib.Path(__file__).resolve().parents[2]
    sources = [*root.glob("agentrun/**/*.py"), *root.glob("operator/agentrun_operator/**/*.py"),
               *root.glob("worker/agentrun_worker/**/*.py")]
    elsewhere: dict[str, list[str]] = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "transition"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "kube"):
                phase = ast.unparse(node.args[3])
                elsewhere.setdefault(str(path.relative_to(root)), []).append(phase)
    assert elsewhere.pop("agentrun/ending.py") == ["ending.phase"]
    ends = {where: found for where, found in elsewhere.items()
            if set(found) - {"phases.Phase.PENDING", "phases.Phase.QUEUED", "phases.Phase.RUNNING"}}
    assert ends == {}, ends
