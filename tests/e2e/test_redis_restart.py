"""A Redis restart in the middle of a run: real kopf, a real Dramatiq worker, RabbitMQ, PostgreSQL,
and a private ``redis-server`` without persistence that the test kills and starts again.

The restart loses every key: the run's stream so far, its lease, its stop flag. A run must
still end once, ``Succeeded``, on the resource, in the database and on the stream:

- the worker's stream writes wait for Redis and go on in order (no duplicate, no gap after
  the restart other than what the restart itself erased);
- the worker takes its lease back (``run.lease_reclaimed``) instead of abandoning the run,
  and the operator, seeing Redis just restarted, does not re-queue it meanwhile;
- nothing is run twice: one ``run.started``, one ``run.finished``, attempt 1.

And a stop requested before the restart still stops its run: the worker reads the
resource's ``spec.stop`` when the Redis flag is gone.

It has its own bed (emulator, operator, worker) because the session's operator uses the
shared Redis, which must never be restarted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from agentrun import keys, streams
from tests.e2e import harness
from tests.e2e.redisnode import RedisServer
from tests.e2e.scenarios import agentrun, final_events, stream_events

pytestmark = pytest.mark.e2e


# 25 turns of 8 words, 60 ms a word: about 12 s of streaming, so the restart falls mid-run.
SLOW = [{"text": " ".join(f"w{turn}-{i}" for i in range(8)), "chunkDelayMs": 60} for turn in range(25)]


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, amqp_url: str,
            postgres_dsn: str) -> Iterator[tuple[harness.Bed, RedisServer]]:
    state = tmp_path_factory.mktemp("redis-restart")
    server = RedisServer(state)
    server.start()
    try:
        with harness.emulated_bed(state, amqp_url=amqp_url, redis_url=server.url, database_url=postgres_dsn) as bed:
            bed.start_operator()
            yield bed, server
    finally:
        server.kill()


def test_a_redis_restart_mid_run_loses_no_final_state_and_runs_nothing_twice(
    private: tuple[harness.Bed, RedisServer],
) -> None:
    bed, server = private
    namespace = bed.new_namespace()
    queue = f"agentrun.{namespace}.default"
    # Given a worker renewing its lease every 2 s, streaming a long answer
    worker = bed.start_worker(queue, AGENTRUN_LEASE_RENEW_SECONDS="2")
    try:
        spec = agentrun(namespace, "long")
        spec["spec"]["agent"]["script"] = SLOW
        uid = bed.create(spec)["metadata"]["uid"]
        bed.wait_phase(namespace, "long", "Running")
        harness.wait_until(
            lambda: sum(1 for e in stream_events(server.url, uid) if e["type"] == streams.ASSISTANT) >= 3,
            30, "the model to stream a few tokens")
        # When Redis dies and comes back empty a second later
        server.kill()
        harness.wait_until(lambda: "stream.write_retry" in worker.output(), 30, "the worker to retry a write")
        server.start()
        # Then the run ends Succeeded, at attempt 1, on the resource and in the database
        status = bed.wait_phase(namespace, "long", "Succeeded", "Failed", "Stopped", timeout=120)["status"]
        assert (status["phase"], status["attempt"], status["iterations"]) == ("Succeeded", 1, len(SLOW)), status
        row = bed.db_row(uid)
        assert row is not None and (row["status"], row["attempt"]) == ("Succeeded", 1)
        # And the stream written after the restart holds the rest of the answer in order, once,
        # then one terminal event
        events = final_events(server.url, uid)
        terminal = [e for e in events if streams.is_terminal(e)]
        assert len(terminal) == 1 and events[-1] is terminal[0] and terminal[0]["status"] == "succeeded"
        words = [tuple(int(n) for n in w[1:].split("-")) for e in events if e["type"] == streams.ASSISTANT
                 for w in e["delta"].split()]
        assert words, "nothing streamed after the restart"
        assert words == sorted(set(words)), "words after the restart are duplicated or out of order"
        assert words[-1] == (len(SLOW) - 1, 7)
        # And the worker took its lease back instead of abandoning the run; the operator did
        # not re-queue it; it ran once
        output = worker.output()
        assert '"run.lease_reclaimed"' in output
        assert '"run.lease_lost"' not in output and '"run.abandoned"' not in output
        assert output.count('"run.started"') == 1 and output.count('"run.finished"') == 1
        operator_output = "".join(p.output() for p in bed.procs if p.name == "operator")
        assert '"run.recovered"' not in operator_output
        harness.wait_until(lambda: bed.queue_depth(queue) == 0, 30, "the message to be acknowledged")
        assert bed.queue_depth(f"{queue}.DQ") == 0 and bed.queue_depth(f"{queue}.XQ") == 0
    finally:
        worker.stop()
        bed.delete_queues(queue)


def test_a_stop_whose_flag_a_redis_restart_erased_still_stops_the_run(
    private: tuple[harness.Bed, RedisServer],
) -> None:
    bed, server = private
    namespace = bed.new_namespace()
    queue = f"agentrun.{namespace}.default"
    # Given a queued run (no worker yet) whose stop was requested: the operator wrote the flag
    uid = bed.create(agentrun(namespace, "halted"))["metadata"]["uid"]
    bed.wait_phase(namespace, "halted", "Queued")
    bed.patch_spec(namespace, "halted", {"stop": True})
    client = redis.Redis.from_url(server.url)
    harness.wait_until(lambda: client.exists(keys.stop(uid)), 15, "the operator to write the stop flag")
    # When Redis restarts empty, so the flag is gone, and only then a worker takes the message
    server.kill()
    server.start()
    client = redis.Redis.from_url(server.url)
    assert not client.exists(keys.stop(uid))
    worker = bed.start_worker(queue)
    try:
        # Then the run ends Stopped before it started, from the resource's spec.stop
        status = bed.wait_phase(namespace, "halted", "Stopped", "Succeeded", "Failed", timeout=60)["status"]
        assert (status["phase"], status["reason"]) == ("Stopped", "StopRequested"), status
        assert status["message"] == "stopped on request before it started"
        assert '"run.started"' not in worker.output() and '"run.stop_from_resource"' in worker.output()
        row = bed.db_row(uid)
        assert row is not None and (row["status"], row["reason"]) == ("Stopped", "StopRequested"), row
        harness.wait_until(lambda: bed.queue_depth(queue) == 0, 30, "the message to be acknowledged")
    finally:
        worker.stop()
        bed.delete_queues(queue)
