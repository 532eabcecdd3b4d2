"""Graceful shutdown of a worker process: SIGTERM mid-run, the run is handed back and resumed.

Real kopf, real Dramatiq worker processes, RabbitMQ, Redis and PostgreSQL. ``Proc.stop``
sends SIGTERM to the Dramatiq main process, as the kubelet does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from agentrun import keys, streams
from tests.e2e import harness
from tests.e2e.scenarios import agentrun, final_events, stream_events

pytestmark = pytest.mark.e2e

# 16 turns of 6 words, 40 ms a word: about 4 s of streaming, so SIGTERM lands mid-run even on a busy machine.
TURNS = [{"text": " ".join(f"t{turn}w{i}" for i in range(6)), "chunkDelayMs": 40} for turn in range(16)]


async def _get(url: str, key: str) -> str | None:
    client = aioredis.Redis.from_url(url)
    try:
        value = await client.get(key)
        return value.decode() if value is not None else None
    finally:
        await client.aclose()


def test_sigterm_mid_run_hands_the_run_back_and_another_worker_finishes_it_once(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker with a short grace period, two turns into a long run
    queue = f"agentrun.{namespace}.default"
    first = bed.start_worker(queue, AGENTRUN_SHUTDOWN_GRACE_SECONDS="0.2")
    spec = agentrun(namespace, "rollout")
    spec["spec"]["agent"]["script"] = TURNS
    uid = bed.create(spec)["metadata"]["uid"]
    harness.wait_until(
        lambda: sum(1 for e in stream_events(bed.redis_url, uid) if e["type"] == streams.MESSAGE) >= 2,
        20, "two completed turns")
    # When the worker is sent SIGTERM
    first.stop()
    # Then it exits having handed the run back: not final, lease marked, message back on the queue
    assert first.popen is not None and first.popen.returncode is not None
    assert '"run.handed_back"' in first.output(), first.output()[-3000:]
    status = bed.get_run(namespace, "rollout")["status"]
    assert (status["phase"], status["attempt"]) == ("Running", 1)
    assert (asyncio.run(_get(bed.redis_url, keys.lease(uid))) or "").startswith("handed-back:")
    # (published with a delay, so on the pool's delay queue: none of the old worker's threads takes it)
    harness.wait_until(lambda: bed.queue_depth(f"{queue}.DQ") == 1, 10, "the run's message back on the queue")
    events = stream_events(bed.redis_url, uid)
    assert not any(streams.is_terminal(e) for e in events)
    assert events[-1]["type"] == streams.STATUS and events[-1]["status"] == "requeued"
    # When another worker starts
    second = bed.start_worker(queue)
    # Then it resumes the same attempt after the stored turns and the run succeeds once
    status = bed.wait_phase(namespace, "rollout", "Succeeded", "Failed", "Stopped")["status"]
    assert (status["phase"], status["reason"], status["attempt"]) == ("Succeeded", "Completed", 1)
    assert status["iterations"] == len(TURNS)
    assert status["result"] == TURNS[-1]["text"]
    assert status["workerInstance"] != ""
    assert '"run.resumed"' in second.output()
    # (the draining worker may still take the handed-back copy and defer it at once, untouched:
    # see agentrun_worker.shutdown; it never starts the run a second time)
    assert first.output().count('"run.started"') == 1
    events = final_events(bed.redis_url, uid)
    terminal = [e for e in events if streams.is_terminal(e)]
    assert len(terminal) == 1 and events[-1] is terminal[0] and terminal[0]["status"] == "succeeded"
    running = [e for e in events if e["type"] == streams.STATUS and e["status"] == "running"]
    assert [e["attempt"] for e in running] == [1, 1]
    # And every turn is stored once, in order, with the user's input first
    msgs = bed.db_messages(uid)
    assert [m["role"] for m in msgs] == ["user"] + ["assistant"] * len(TURNS)
    assert [json.loads(m["content"]) for m in msgs[1:]] == [t["text"] for t in TURNS]
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["attempt"]) == ("Succeeded", 1)
    # And nothing is left: the lease released, the queue and its dead letters empty
    harness.wait_until(lambda: bed.queue_depth(queue) + bed.queue_depth(f"{queue}.DQ") == 0, 10,
                       "the message to be acknowledged")
    assert bed.queue_depth(f"{queue}.XQ") == 0
    assert asyncio.run(_get(bed.redis_url, keys.lease(uid))) is None


def test_sigterm_lets_a_run_that_ends_within_the_grace_period_finish_on_the_same_worker(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker with a long grace period, running a short run
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue, AGENTRUN_SHUTDOWN_GRACE_SECONDS="30")
    spec = agentrun(namespace, "short")
    spec["spec"]["agent"]["script"] = TURNS[:3]
    uid = bed.create(spec)["metadata"]["uid"]
    harness.wait_until(
        lambda: any(e["type"] == streams.ASSISTANT for e in stream_events(bed.redis_url, uid)),
        20, "the model to stream")
    # When the worker is sent SIGTERM
    worker.stop(timeout=30)
    # Then the run finished on it before it exited, and nothing was handed back
    status = bed.get_run(namespace, "short")["status"]
    assert (status["phase"], status["attempt"], status["iterations"]) == ("Succeeded", 1, 3)
    assert '"run.handed_back"' not in worker.output() and '"run.finished"' in worker.output()
    events = final_events(bed.redis_url, uid)
    assert [e["status"] for e in events if e["type"] == streams.STATUS] == ["running", "succeeded"]
    assert bed.queue_depth(queue) + bed.queue_depth(f"{queue}.DQ") == 0
