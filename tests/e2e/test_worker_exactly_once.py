"""Execution guarantees end to end: once past RabbitMQ's consumer timeout, deadlines before
Dramatiq's time limit, and a lease that is renewed (with a modest heartbeat) while a run lives.

The consumer-timeout test needs a broker whose settings it may change: it runs on a private
RabbitMQ node (tests/rabbitnode.py) with its own emulator and operator, never on the shared
broker. The others use the session's bed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentrun import broker, keys, message
from tests.e2e import harness
from tests.e2e.scenarios import final_events

pytestmark = pytest.mark.e2e

RABBIT_DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
RABBIT_DEFAULT_TICK_MS = 60_000
TURNS = 12


@pytest.fixture(scope="module")
def private_bed(tmp_path_factory: pytest.TempPathFactory, rabbit_node: Any, redis_url: str,
                postgres_dsn: str) -> Iterator[harness.Bed]:
    """An emulator, an operator and workers of their own on the private RabbitMQ node."""
    with harness.emulated_bed(tmp_path_factory.mktemp("private-bed"), amqp_url=rabbit_node.amqp_url,
                              redis_url=redis_url, database_url=postgres_dsn) as bed:
        bed.start_operator()
        yield bed


def slow_run(namespace: str, name: str, turns: int, delay_ms: int, **spec: Any) -> dict[str, Any]:
    script = [{"text": f"turn-{i}", "chunkDelayMs": delay_ms} for i in range(turns)]
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"input": "go", "agent": {"model": "scripted", "script": script, "maxIterations": turns},
                     **spec}}


@pytest.mark.timeout(300)
def test_a_run_longer_than_the_consumer_timeout_is_redelivered_and_still_executes_once(
    private_bed: harness.Bed, rabbit_node: Any
) -> None:
    bed = private_bed
    namespace = bed.new_namespace()
    queue = f"agentrun.{namespace}.default"
    # Given a broker whose delivery acknowledgement timeout is 2 s, checked every 250 ms (not
    # once a minute), and a worker whose channels are opened after the change
    rabbit_node.set_consumer_timeout(2_000, check_every_ms=250)
    try:
        worker = bed.start_worker(queue, threads=2)
        # When a run lasts well past the timeout (about 12 s)
        uid = bed.create(slow_run(namespace, "long", turns=TURNS, delay_ms=1_000))["metadata"]["uid"]
        bed.wait_phase(namespace, "long", "Running", timeout=60)
        # Then the broker closes the worker's channel and delivers the message again, and the
        # redelivery is dropped because the first delivery still holds the run's lease
        harness.wait_until(lambda: "lease held" in worker.output(), 60,
                           "the broker to redeliver the message to the worker")
        assert "PRECONDITION_FAILED" in worker.output() or "consumer ack timed out" in worker.output()
        assert bed.get_run(namespace, "long")["status"]["phase"] == "Running", "redelivered while it runs"
        status = bed.wait_phase(namespace, "long", "Succeeded", "Failed", "Stopped", timeout=120)["status"]
    finally:
        rabbit_node.set_consumer_timeout(RABBIT_DEFAULT_CONSUMER_TIMEOUT_MS, check_every_ms=RABBIT_DEFAULT_TICK_MS)
    # And the run succeeded once: one start, every turn once, one terminal event, attempt 1
    assert (status["phase"], status["attempt"], status["iterations"]) == ("Succeeded", 1, TURNS), status
    assert worker.alive(), "the worker must survive the broker closing its channel"
    assert worker.output().count('"run.started"') == 1
    events = final_events(bed.redis_url, uid)
    assert sum(1 for e in events if e["type"] == "status" and e["status"] == "running") == 1
    assert [e["delta"] for e in events if e["type"] == "assistant"] == [f"turn-{i}" for i in range(TURNS)]
    assert sum(1 for e in events if e["type"] == "status" and e["status"] == "succeeded") == 1
    assert [m["role"] for m in bed.db_messages(uid)] == ["user"] + ["assistant"] * TURNS
    # And no copy of the message is left behind on any queue
    harness.wait_until(lambda: bed.queue_depth(queue) == 0, 30, "the queue to drain")
    assert bed.queue_depth(f"{queue}.DQ") == 0 and bed.queue_depth(f"{queue}.XQ") == 0


def test_dramatiqs_time_limit_follows_timeout_seconds_not_its_ten_minute_default() -> None:
    # Given run messages with and without a deadline
    def time_limit(spec: dict[str, Any]) -> int:
        payload = message.RunMessage(uid="u", namespace="n", name="r", generation=1, attempt=1, thread_id="u",
                                     queued_at="2025-01-01T00:00:00Z", spec=spec)
        limit: int = broker.build_message(payload, "q").options["time_limit"]
        return limit

    # Then the time limit is the deadline plus a margin for the final writes, in ms
    assert time_limit({"timeoutSeconds": 3600}) == 3_600_000 + 300_000
    assert time_limit({"timeoutSeconds": 2}) == 2_000 + 300_000
    # And a run without a deadline is not cut at Dramatiq's default of 10 minutes
    assert time_limit({}) == broker.DEFAULT_TIME_LIMIT_MS > 600_000


def test_a_short_deadline_is_enforced_by_the_worker_not_by_dramatiqs_time_limit(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker and a run of about 20 s whose deadline is 2 s
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue)
    uid = bed.create(slow_run(namespace, "late", turns=10, delay_ms=2_000, timeoutSeconds=2))["metadata"]["uid"]
    # Then it ends Failed/DeadlineExceeded with the worker's message, once, not retried
    status = bed.wait_phase(namespace, "late", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded"), status
    assert status["message"] == "the run exceeded timeoutSeconds=2"
    assert status["iterations"] < 10
    harness.wait_until(lambda: bed.queue_depth(queue) == 0, 15, "the message to be acknowledged")
    assert "Time limit exceeded" not in worker.output() and "Retrying message" not in worker.output()
    assert bed.queue_depth(f"{queue}.DQ") == 0 and bed.queue_depth(f"{queue}.XQ") == 0
    assert worker.output().count('"run.started"') == 1
    events = final_events(bed.redis_url, uid)
    assert [e["status"] for e in events if e["type"] == "status"] == ["running", "failed"]


async def _pttl(url: str, key: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.pttl(key))
    finally:
        await client.aclose()


def test_the_lease_is_renewed_and_the_heartbeat_written_at_its_own_modest_rate(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker whose lease (TTL 3 s) is renewed every 0.5 s and whose heartbeat is every 2 s
    bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_LEASE_TTL_SECONDS="3",
                     AGENTRUN_LEASE_RENEW_SECONDS="0.5", AGENTRUN_HEARTBEAT_SECONDS="2")
    # When a run lasts about 10 s (over three lease TTLs)
    uid = bed.create(slow_run(namespace, "beat", turns=5, delay_ms=2_000))["metadata"]["uid"]
    bed.wait_phase(namespace, "beat", "Running")
    beats: set[str] = set()
    ttls: list[int] = []

    def finished() -> bool:
        status = bed.get_run(namespace, "beat").get("status") or {}
        if status.get("phase") == "Running":
            beats.add(status["lastHeartbeatTime"])
            ttls.append(asyncio.run(_pttl(bed.redis_url, keys.lease(uid))))
        return status.get("phase") in ("Succeeded", "Failed", "Stopped")

    harness.wait_until(finished, 60, "the run to end", interval=0.2)
    status = bed.get_run(namespace, "beat")["status"]
    assert status["phase"] == "Succeeded", status
    # Then the lease outlived its TTL several times over: it was renewed, never let lapse
    assert all(ttl > 0 for ttl in ttls), ttls
    # And lastHeartbeatTime moved forward while the run lived, but no more often than every 2 s
    started = harness_seconds(status["startedAt"])
    seconds = sorted(harness_seconds(b) for b in beats)
    assert len(seconds) >= 3, beats
    assert all(b - a >= 1 for a, b in zip(seconds, seconds[1:], strict=False)), beats
    duration = harness_seconds(status["finishedAt"]) - started
    assert len(seconds) <= duration / 2 + 2, (beats, duration)


def harness_seconds(value: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
