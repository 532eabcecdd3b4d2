"""An AgentRun end to end: real kopf, real Dramatiq worker processes, RabbitMQ, Redis, PostgreSQL.

Only the Kubernetes API server is emulated (agentrun_local.emulator, built on kmock).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentrun import broker, keys, message, streams
from tests.e2e import harness
from tests.e2e.scenarios import SCRIPT, agentrun, final_events, stream_events

pytestmark = pytest.mark.e2e



def test_a_run_goes_queued_running_succeeded_and_everything_agrees(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker on the namespace's default pool
    bed.start_worker(f"agentrun.{namespace}.default")
    # When an AgentRun is applied
    recorder = harness.PhaseRecorder(bed, namespace, "hello")
    created = bed.create(agentrun(namespace, "hello"))
    uid = created["metadata"]["uid"]
    obj = bed.wait_phase(namespace, "hello", "Succeeded", "Failed")
    # the watch may deliver the last change a moment after the GET sees it
    harness.wait_until(lambda: recorder.phases[-1:] == [obj["status"]["phase"]], 10, "the watch to see the end")
    seen = recorder.stop()
    status = obj["status"]
    # Then it passed through Queued and Running and succeeded
    assert status["phase"] == "Succeeded", status
    assert seen[-3:] == ["Queued", "Running", "Succeeded"] or seen == ["Queued", "Running", "Succeeded"], seen
    assert status["attempt"] == 1
    assert status["observedGeneration"] == 1
    assert status["iterations"] == 2
    assert status["threadId"] == uid
    assert status["streamKey"] == keys.stream(uid)
    assert status["result"] == SCRIPT[-1]["text"]
    assert status["queuedAt"] <= status["startedAt"] <= status["finishedAt"]
    # And the stream holds exactly the scripted output, in order, plus one terminal event
    # (written just after the resource's final phase: the worker's order is DB, resource, stream)
    events = harness.wait_until(
        lambda: (found := stream_events(bed.redis_url, uid)) and streams.is_terminal(found[-1]) and found, 10,
        "the terminal stream event")
    text = "".join(e["delta"] for e in events if e["type"] == streams.ASSISTANT)
    assert text == SCRIPT[0]["text"] + SCRIPT[1]["text"]
    terminal = [e for e in events if streams.is_terminal(e)]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    assert terminal[0]["status"] == "succeeded"
    assert {k: events[0][k] for k in ("type", "status", "attempt")} == {"type": "status", "status": "running",
                                                                         "attempt": 1}
    # And the database row agrees with the resource
    row = bed.db_row(uid)
    assert row is not None
    assert (row["status"], row["attempt"], row["namespace"], row["name"], row["thread_id"]) == (
        "Succeeded", 1, namespace, "hello", uid)
    assert row["result"] == status["result"]
    assert json.loads(row["usage"]) if isinstance(row["usage"], str) else row["usage"] == status["usage"]
    assert row["error"] is None
    # And the thread holds the user's input and both assistant turns
    msgs = bed.db_messages(uid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "assistant"]
    # And the keys of the run expire
    ttl = asyncio.run(_ttl(bed.redis_url, keys.stream(uid)))
    assert 0 < ttl <= 86_400
    assert asyncio.run(_exists(bed.redis_url, keys.lease(uid))) == 0
    # And each phase change is an Event, once (what `kubectl describe` lists)

    def reasons() -> list[str]:
        return sorted(e["reason"] for e in bed.emulator.list("v1", "events", namespace)
                      if e.get("involvedObject", {}).get("uid") == uid
                      and e["reason"] in ("Queued", "Running", "Completed"))

    harness.wait_until(lambda: "Completed" in reasons(), 10, "the Completed Event")
    assert reasons() == ["Completed", "Queued", "Running"]


async def _ttl(url: str, key: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.ttl(key))
    finally:
        await client.aclose()


async def _exists(url: str, key: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.exists(key))
    finally:
        await client.aclose()


def test_an_agent_that_raises_fails_with_reason_and_message_in_both_places(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    spec = agentrun(namespace, "boom")
    spec["spec"]["agent"]["script"] = [{"text": "Let me try."}, {"fail": "the model exploded"}]
    uid = bed.create(spec)["metadata"]["uid"]
    status = bed.wait_phase(namespace, "boom", "Succeeded", "Failed")["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "ModelError"
    assert status["message"] == "the model exploded"
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "False" and complete["reason"] == "ModelError"
    row = bed.db_row(uid)
    assert row is not None
    assert (row["status"], row["reason"], row["error"]) == ("Failed", "ModelError", "the model exploded")
    events = final_events(bed.redis_url, uid)
    assert events[-1]["type"] == "status" and events[-1]["status"] == "failed"
    assert events[-1]["message"] == "the model exploded"


def test_an_unknown_pool_fails_with_reason_and_an_event(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    bed.create(agentrun(namespace, "lost", workerPool="nope"))
    status = bed.wait_phase(namespace, "lost", "Failed", timeout=30)["status"]
    assert status["reason"] == "WorkerPoolNotFound"
    assert '"nope"' in status["message"]

    def warning_posted() -> bool:  # kopf posts Events in the background, shortly after the handler
        return any(e.get("involvedObject", {}).get("name") == "lost" and e.get("reason") == "WorkerPoolNotFound"
                   and e.get("type") == "Warning" for e in bed.emulator.list("v1", "events", namespace))

    harness.wait_until(warning_posted, 10, "a Warning Event WorkerPoolNotFound")


def test_a_stop_requested_before_the_worker_starts_ends_stopped_without_calling_the_model(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a queued run that no worker has taken yet
    queue = f"agentrun.{namespace}.default"
    uid = bed.create(agentrun(namespace, "early-stop"))["metadata"]["uid"]
    bed.wait_phase(namespace, "early-stop", "Queued")
    # When a stop is requested and only then a worker starts
    bed.patch_spec(namespace, "early-stop", {"stop": True})
    harness.wait_until(lambda: asyncio.run(_exists(bed.redis_url, keys.stop(uid))), 15, "the stop flag")
    bed.start_worker(queue)
    # Then the run ends Stopped and the model was never called
    status = bed.wait_phase(namespace, "early-stop", "Stopped", "Succeeded", "Failed")["status"]
    assert status["phase"] == "Stopped"
    assert status["reason"] == "StopRequested"
    events = final_events(bed.redis_url, uid)
    assert [e["type"] for e in events] == ["status"]
    assert events[0]["status"] == "stopped"
    assert bed.db_messages(uid) == []
    assert bed.db_row(uid)["status"] == "Stopped"  # type: ignore[index]


def test_the_same_message_delivered_twice_at_once_runs_once(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a queued run (no worker yet) and a second copy of its message on the queue
    queue = f"agentrun.{namespace}.default"
    created = bed.create(agentrun(namespace, "twice"))
    uid = created["metadata"]["uid"]
    status = bed.wait_phase(namespace, "twice", "Queued")["status"]
    harness.wait_until(lambda: bed.queue_depth(queue) == 1, 10, "the first message")
    obj = bed.get_run(namespace, "twice")
    duplicate = message.RunMessage(uid=uid, namespace=namespace, name="twice", generation=1, attempt=1,
                                   thread_id=status["threadId"], queued_at=status["queuedAt"], spec=obj["spec"])
    from agentrun import settings

    rabbit = broker.make_broker(settings.Settings(broker_url=bed.amqp_url))
    try:
        broker.enqueue(rabbit, duplicate, queue)
    finally:
        rabbit.close()
    assert bed.queue_depth(queue) == 2
    # When a worker with several threads takes both at once
    worker = bed.start_worker(queue, threads=4)
    bed.wait_phase(namespace, "twice", "Succeeded", "Failed")
    harness.wait_until(lambda: bed.queue_depth(queue) == 0, 15, "both deliveries to be acknowledged")
    harness.wait_until(lambda: worker.output().count('"run.skipped"') >= 1, 10, "the duplicate to be skipped")
    # Then the agent ran once: one running event, the scripted text once, one set of messages
    events = final_events(bed.redis_url, uid)
    assert sum(1 for e in events if e["type"] == "status" and e["status"] == "running") == 1
    assert "".join(e["delta"] for e in events if e["type"] == "assistant") == SCRIPT[0]["text"] + SCRIPT[1]["text"]
    assert [m["role"] for m in bed.db_messages(uid)] == ["user", "assistant", "assistant"]


def test_an_operator_restart_never_enqueues_a_run_twice(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given a run the operator has queued while no worker runs
    queue = f"agentrun.{namespace}.default"
    bed.create(agentrun(namespace, "restart"))
    bed.wait_phase(namespace, "restart", "Queued")
    harness.wait_until(lambda: bed.queue_depth(queue) == 1, 10, "the message")
    # (and kopf has recorded the creation as handled: killed before that, the operator would
    # rightly publish again after the restart, and the worker would drop the duplicate)
    harness.wait_until(
        lambda: "agentrun.io/last-handled-configuration"
        in (bed.get_run(namespace, "restart")["metadata"].get("annotations") or {}),
        10, "kopf to record the creation as handled")
    # When the operator is killed and started again (a fresh list + watch of every run)
    op2 = operator.restart_after_kill()
    harness.wait_until(lambda: '"operator.started"' in op2.output(), 10, "the new operator")
    bed.create(agentrun(namespace, "after-restart"))  # proves the new operator is handling events
    bed.wait_phase(namespace, "after-restart", "Queued")
    # Then the first run's message is still the only one of its kind on the queue
    harness.wait_until(lambda: bed.queue_depth(queue) == 2, 10, "two messages")
    assert bed.queue_depth(queue) == 2
    # And both runs complete exactly once
    worker = bed.start_worker(queue)
    for name in ("restart", "after-restart"):
        assert bed.wait_phase(namespace, name, "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert worker.output().count('"run.started"') == 2
