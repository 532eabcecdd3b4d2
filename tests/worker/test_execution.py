"""One execution in process: a real Redis and SQLite store, the API server a recording fake.

What this pins is cheaper here than end to end: what the heartbeat writes while a run lives,
and the usage a run reports when it is stopped or fails in the middle of a model turn.
"""

from __future__ import annotations

import asyncio
import copy
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from agentrun_worker import agent, execution, providers, runtime, shutdown

from agentrun import message, settings, store, streams


class RecordingApi:
    """The AgentRun as the API server would keep it: GET returns it, a status patch merges."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.patches: list[dict[str, Any]] = []

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    async def patch(self, resource: Any, name: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(patch))
        status = self.obj.setdefault("status", {})
        status.update({k: v for k, v in (patch.get("status") or {}).items()})
        meta = self.obj["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)


@pytest.fixture(autouse=True)
def fresh_shutdown_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's shutdown events belong to one event loop; each test runs on its own."""
    monkeypatch.setattr(shutdown, "_handback", None)
    monkeypatch.setattr(shutdown, "_draining", None)


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


def running(script: list[dict[str, Any]]) -> tuple[message.RunMessage, RecordingApi]:
    uid = str(uuid.uuid4())
    spec = {"input": "hello", "agent": {"model": "scripted", "script": script}}
    msg = message.RunMessage(uid=uid, namespace="ns", name=f"r-{uid[:8]}", generation=1, attempt=1,
                             thread_id=uid, queued_at="2025-01-01T00:00:00Z", spec=spec)
    api = RecordingApi({"metadata": {"uid": uid, "name": msg.name, "namespace": "ns", "resourceVersion": "1",
                                     "generation": 1},
                        "spec": spec, "status": {"phase": "Running", "attempt": 1}})
    return msg, api


def new_execution(msg: message.RunMessage, api: RecordingApi, client: aioredis.Redis,
                  db: store.Store) -> execution.Execution:
    config = settings.Settings(instance_id=f"test-{msg.uid[:8]}", key_ttl_seconds=60)
    return execution.Execution(msg, runtime.Clients(redis=client, api=api, store=db),  # type: ignore[arg-type]
                               config, received_at="2025-01-01T00:00:00Z")


def loop_for(msg: message.RunMessage, ex: execution.Execution, db: store.Store) -> agent.AgentLoop:
    spec = msg.spec["agent"]
    return agent.AgentLoop(provider=providers.for_agent(spec, "hello", runtime.worker_config()), writer=ex.writer,
                           db=db, run_id=msg.uid, attempt=1, thread_id=msg.thread_id, agent=spec,
                           history=[{"role": "user", "content": "hello"}])


async def until(condition: Any, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_heartbeat_carries_the_iterations_so_far(client: aioredis.Redis, db: store.Store) -> None:
    # Given a run in its third model turn (two turns done)
    slow = {"text": "one two three four five six seven eight", "chunkDelayMs": 50}
    msg, api = running([{"text": "first"}, {"text": "second"}, slow])
    await db.ensure_thread(msg.thread_id, namespace="ns")
    ex = new_execution(msg, api, client, db)
    loop = loop_for(msg, ex, db)
    driving = asyncio.create_task(ex._drive(loop))
    await until(lambda: loop.outcome.iterations >= 3)
    # When its heartbeat writes the resource
    await ex.keeper.heartbeat()
    # Then the heartbeat says how many iterations the run is in, never 0
    beat = api.patches[-1]["status"]
    assert "lastHeartbeatTime" in beat
    assert beat.get("iterations", 3) >= 3
    ex.watch.request("StopRequested")
    await driving


async def test_a_run_stopped_mid_turn_reports_the_tokens_streamed(client: aioredis.Redis, db: store.Store) -> None:
    # Given a run streaming its first (and only) model turn slowly
    words = " ".join(f"w{i}" for i in range(200))
    msg, api = running([{"text": words, "chunkDelayMs": 20}])
    await db.ensure_thread(msg.thread_id, namespace="ns")
    ex = new_execution(msg, api, client, db)
    loop = loop_for(msg, ex, db)
    driving = asyncio.create_task(ex._drive(loop))
    await until(lambda: ex.writer.count >= 5)
    assert not api.patches, api.patches
    # When it is stopped before the turn ends
    ex.watch.request("StopRequested")
    await driving
    await ex.writer.flush()
    # Then the tokens counted so far are reported: on the resource, in the database, on the stream
    final = api.obj["status"]
    assert final["phase"] == "Stopped"
    assert final["usage"]["outputTokens"] >= 3 and final["usage"]["inputTokens"] >= 1
    assert final["usage"]["totalTokens"] == final["usage"]["inputTokens"] + final["usage"]["outputTokens"]
    record = await db.get_run(msg.uid)
    assert record is not None and record.usage == final["usage"]
    terminal = [e for _, e in await streams.read_all(client, msg.uid)][-1]
    assert terminal["status"] == "stopped" and terminal["usage"] == final["usage"]


async def test_a_run_failed_mid_turn_reports_the_tokens_streamed(client: aioredis.Redis, db: store.Store) -> None:
    # Given a run whose deadline passes while its first model turn streams
    words = " ".join(f"w{i}" for i in range(100))
    msg, api = running([{"text": words, "chunkDelayMs": 20}])
    msg = msg.model_copy(update={"spec": {**msg.spec, "timeoutSeconds": 0.3}})
    await db.ensure_thread(msg.thread_id, namespace="ns")
    ex = new_execution(msg, api, client, db)
    # When it runs past the deadline
    await ex._drive(loop_for(msg, ex, db))
    # Then it fails DeadlineExceeded with the tokens it streamed
    final = api.obj["status"]
    assert (final["phase"], final["reason"]) == ("Failed", "DeadlineExceeded")
    assert final["usage"]["outputTokens"] >= 3
