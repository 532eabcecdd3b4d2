"""A new run on a busy thread, end to end: ``multitaskStrategy`` enqueue (default), reject, interrupt.

Real kopf, real Dramatiq worker processes, RabbitMQ, Redis, PostgreSQL. A thread executes one
run at a time; what a second run does about it is its ``multitaskStrategy``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.scenarios import stream_events

pytestmark = pytest.mark.e2e

POLL = "0.3"
SLOW = [{"text": " ".join(f"w{i}" for i in range(20)), "chunkDelayMs": 400}]  # about 8 s


def on_thread(namespace: str, name: str, thread: str, *, script: list[dict[str, Any]] | None = None,
              **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"threadId": thread, "input": f"input of {name}",
                            "agent": {"model": "scripted", "script": script or [{"text": f"reply of {name}"}]}}
    body.update(spec)
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def final(bed: harness.Bed, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    obj = bed.wait_phase(namespace, name, "Succeeded", "Failed", "Stopped", timeout=timeout)
    status: dict[str, Any] = obj["status"]
    return status


def test_runs_on_a_busy_thread_wait_and_run_in_order_by_default(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker with room for several runs, and a slow run executing on a thread
    bed.start_worker(f"agentrun.{namespace}.default", threads=4, AGENTRUN_THREAD_POLL_SECONDS=POLL)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    bed.create(on_thread(namespace, "first", thread, script=SLOW))
    bed.wait_phase(namespace, "first", "Running")
    # When two more runs arrive on that thread, without a multitaskStrategy (the default)
    second = bed.create(on_thread(namespace, "second", thread))
    assert second["spec"]["multitaskStrategy"] == "enqueue"
    bed.create(on_thread(namespace, "third", thread))
    # Then all three succeed, each starting only after the one before it ended
    a, b, c = (final(bed, namespace, n) for n in ("first", "second", "third"))
    assert [s["phase"] for s in (a, b, c)] == ["Succeeded"] * 3, (a, b, c)
    assert a["finishedAt"] <= b["startedAt"] and b["finishedAt"] <= c["startedAt"], (a, b, c)
    # And the later runs told their readers they waited, naming the run in the way
    waiting = [e for e in stream_events(bed.redis_url, second["metadata"]["uid"])
               if e["type"] == "status" and e["status"] == "waiting"]
    assert len(waiting) == 1 and waiting[0]["reason"] == "ThreadBusy", waiting
    assert f"{namespace}/first" in waiting[0]["message"]
    # And the thread holds each run's messages whole, in run order
    contents = [(m["role"], json.loads(m["content"])) for m in bed.db_messages(thread)]
    assert contents == [("user", "input of first"), ("assistant", SLOW[0]["text"]),
                        ("user", "input of second"), ("assistant", "reply of second"),
                        ("user", "input of third"), ("assistant", "reply of third")], contents


def test_reject_fails_the_new_run_with_thread_busy_naming_the_busy_run(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a slow run executing on a thread
    bed.start_worker(f"agentrun.{namespace}.default", threads=4, AGENTRUN_THREAD_POLL_SECONDS=POLL)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    busy_uid = bed.create(on_thread(namespace, "busy", thread, script=SLOW))["metadata"]["uid"]
    bed.wait_phase(namespace, "busy", "Running")
    # When a run with multitaskStrategy reject arrives on the thread
    bed.create(on_thread(namespace, "eager", thread, multitaskStrategy="reject"))
    # Then it fails ThreadBusy at once, naming the busy run, and never touched the thread
    status = final(bed, namespace, "eager")
    assert (status["phase"], status["reason"]) == ("Failed", "ThreadBusy"), status
    assert f"{namespace}/busy ({busy_uid})" in status["message"] and thread in status["message"]
    assert bed.get_run(namespace, "busy")["status"]["phase"] == "Running"
    # And the busy run goes on undisturbed
    assert final(bed, namespace, "busy")["phase"] == "Succeeded"
    assert [m["role"] for m in bed.db_messages(thread)] == ["user", "assistant"]


def test_interrupt_stops_the_busy_run_and_runs_after_it_ended(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a long run executing on a thread
    bed.start_worker(f"agentrun.{namespace}.default", threads=4, AGENTRUN_THREAD_POLL_SECONDS=POLL)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    bed.create(on_thread(namespace, "long", thread, script=SLOW * 10))
    bed.wait_phase(namespace, "long", "Running")
    # When a run with multitaskStrategy interrupt arrives on the thread
    bed.create(on_thread(namespace, "urgent", thread, multitaskStrategy="interrupt"))
    # Then the long run ends Stopped/Interrupted, and the new one runs after it and succeeds
    stopped = final(bed, namespace, "long")
    assert (stopped["phase"], stopped["reason"]) == ("Stopped", "Interrupted"), stopped
    assert stopped["message"] == "interrupted by a new run on its thread"
    assert stopped["iterations"] < 10
    urgent = final(bed, namespace, "urgent")
    assert (urgent["phase"], urgent["result"]) == ("Succeeded", "reply of urgent"), urgent
    assert stopped["finishedAt"] <= urgent["startedAt"]
    # And the thread ends with the urgent run's exchange
    assert [m["role"] for m in bed.db_messages(thread)][-2:] == ["user", "assistant"]


def test_a_waiting_run_holds_no_worker_thread(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given a worker with two threads, one busy with a slow run, and a run waiting for that thread
    bed.start_worker(f"agentrun.{namespace}.default", threads=2, AGENTRUN_THREAD_POLL_SECONDS=POLL)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    bed.create(on_thread(namespace, "slow", thread, script=SLOW * 2))  # about 16 s
    bed.wait_phase(namespace, "slow", "Running")
    waiter_uid = bed.create(on_thread(namespace, "waiter", thread))["metadata"]["uid"]
    harness.wait_until(lambda: any(e["type"] == "status" and e["status"] == "waiting"
                                   for e in stream_events(bed.redis_url, waiter_uid)), 30, "the waiter to wait")
    # When a run on another thread arrives
    bed.create(on_thread(namespace, "elsewhere", f"thread-{uuid.uuid4().hex[:8]}"))
    # Then it runs on the free worker thread while the slow run still executes: the waiting run
    # is a delayed message, not a blocked worker thread
    elsewhere = final(bed, namespace, "elsewhere")
    assert elsewhere["phase"] == "Succeeded"
    assert bed.get_run(namespace, "slow")["status"]["phase"] == "Running"
    slow, waiter = final(bed, namespace, "slow"), final(bed, namespace, "waiter")
    assert elsewhere["finishedAt"] <= slow["finishedAt"] <= waiter["startedAt"]
    assert waiter["phase"] == "Succeeded"


@pytest.mark.usefixtures("fast_operator")
def test_a_run_waiting_for_its_thread_is_not_taken_for_a_lost_message(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given an operator that re-publishes a Queued run after 3 s, and a slow run on a thread
    bed.start_worker(f"agentrun.{namespace}.default", threads=4, AGENTRUN_THREAD_POLL_SECONDS=POLL)
    thread = f"thread-{uuid.uuid4().hex[:8]}"
    bed.create(on_thread(namespace, "slow", thread, script=SLOW))
    bed.wait_phase(namespace, "slow", "Running")
    # When a second run waits for the thread much longer than that
    uid = bed.create(on_thread(namespace, "patient", thread))["metadata"]["uid"]
    assert final(bed, namespace, "slow")["phase"] == "Succeeded"
    status = final(bed, namespace, "patient")
    # Then it ran once after the first, and the operator never re-published it
    assert status["phase"] == "Succeeded" and status["attempt"] == 1
    events = [e for e in bed.emulator.list("v1", "events", namespace)
              if e.get("involvedObject", {}).get("name") == "patient"]
    assert not [e for e in events if e.get("reason") == "Republished"], events
    assert not [line for line in operator.proc.output().splitlines() if "run.republished" in line and uid in line]
