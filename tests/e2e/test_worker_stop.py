"""Stopping a run while its model streams: real kopf, a real Dramatiq worker, RabbitMQ, Redis, PostgreSQL.

``spec.stop: true`` goes through the operator (durable flag + pub/sub wake-up) to the worker,
which cancels the in-flight model stream and ends the run ``Stopped`` everywhere, once.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentrun import streams
from tests.e2e import harness
from tests.e2e.scenarios import agentrun, final_events, stream_events

pytestmark = pytest.mark.e2e

# 40 turns of 8 words, 40 ms a word: about 13 s of streaming, far longer than the test needs.
SLOW = [{"text": " ".join(f"w{turn}-{i}" for i in range(8)), "chunkDelayMs": 40} for turn in range(40)]


def test_a_stop_during_the_model_stream_ends_the_run_stopped_once_and_never_retries(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a worker streaming a long scripted answer
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue)
    spec = agentrun(namespace, "long")
    spec["spec"]["agent"]["script"] = SLOW
    uid = bed.create(spec)["metadata"]["uid"]
    bed.wait_phase(namespace, "long", "Running")
    harness.wait_until(
        lambda: sum(1 for e in stream_events(bed.redis_url, uid) if e["type"] == streams.ASSISTANT) >= 3,
        15, "the model to stream a few tokens")
    # When the user sets spec.stop through the API
    bed.patch_spec(namespace, "long", {"stop": True})
    # Then the run ends Stopped on the resource, in the database and on the stream
    status = bed.wait_phase(namespace, "long", "Stopped", "Succeeded", "Failed")["status"]
    assert (status["phase"], status["reason"], status["attempt"]) == ("Stopped", "StopRequested", 1)
    assert status["iterations"] < len(SLOW)
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("False", "StopRequested")
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"], row["attempt"]) == ("Stopped", "StopRequested", 1)
    events = final_events(bed.redis_url, uid)
    terminal = [e for e in events if streams.is_terminal(e)]
    assert len(terminal) == 1 and events[-1] is terminal[0] and terminal[0]["status"] == "stopped"
    # And the model stream was cut mid-answer: the text streamed is a strict prefix of the script
    text = "".join(e["delta"] for e in events if e["type"] == streams.ASSISTANT)
    assert 0 < len(text) < len("".join(t["text"] for t in SLOW))
    # And the message was acknowledged, not retried or dead-lettered: one execution, one start
    harness.wait_until(lambda: bed.queue_depth(queue) == 0, 10, "the message to be acknowledged")
    assert bed.queue_depth(f"{queue}.DQ") == 0 and bed.queue_depth(f"{queue}.XQ") == 0
    assert sum(1 for e in events if e["type"] == streams.STATUS and e["status"] == "running") == 1
    assert worker.output().count('"run.started"') == 1
    assert worker.output().count('"run.finished"') == 1
