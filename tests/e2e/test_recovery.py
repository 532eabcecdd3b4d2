"""Recovery end to end: lost workers and lost messages, with real processes.

A worker process is killed with SIGKILL mid-run (no clean-up, like a node that disappears);
the operator's scan notices the missing lease and re-queues the run or ends it. Workers run
with a 3 s lease renewed every second and the operator scans every second, so detection is
measured in seconds; the bound asserted is the issue's: lease TTL + 2 × scan interval.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import pika
import pytest

from agentrun import keys, streams
from tests.e2e import harness
from tests.e2e.scenarios import (
    LEASE_TTL,
    SCAN_INTERVAL,
    SLOW,
    SLOW_TEXT,
    WORKER_ENV,
    agentrun,
    families,
    final_events,
    redis_call,
    sample,
    scrape,
    streaming,
    terminal_event,
    warning_events,
)

pytestmark = pytest.mark.e2e




def parent_pid(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent of {pid}")


def holder(bed: harness.Bed, workers: list[harness.Proc], namespace: str, name: str) -> harness.Proc:
    """The worker process group whose process runs the run (from ``status.workerInstance``)."""
    instance = bed.get_run(namespace, name)["status"]["workerInstance"]
    pid = int(instance.rsplit("-", 2)[-2])
    for proc in workers:
        assert proc.popen is not None
        if pid == proc.popen.pid or parent_pid(pid) == proc.popen.pid:
            return proc
    raise AssertionError(f"no worker runs {instance}")



def test_a_killed_worker_s_run_is_requeued_and_completes_once_on_another_worker(
    bed: harness.Bed, fast_operator: harness.Proc, namespace: str
) -> None:
    # Given two workers with a 3 s lease, and a slow run that one of them is streaming
    queue = f"agentrun.{namespace}.default"
    workers = [bed.start_worker(queue, threads=2, **WORKER_ENV) for _ in range(2)]
    uid = bed.create(agentrun(namespace, "survivor", SLOW))["metadata"]["uid"]
    bed.wait_phase(namespace, "survivor", "Running")
    harness.wait_until(lambda: streaming(bed, uid), 20, "the first streamed words")
    victim = holder(bed, workers, namespace, "survivor")
    survivor = next(w for w in workers if w is not victim)
    # When that worker is killed with SIGKILL
    victim.kill()
    killed_at = time.monotonic()

    def requeued() -> dict[str, Any] | None:
        status = bed.get_run(namespace, "survivor").get("status") or {}
        return status if int(status.get("attempt") or 0) >= 2 else None

    status = harness.wait_until(requeued, 30, "the run to be re-queued as attempt 2", interval=0.01)
    detection = time.monotonic() - killed_at
    print(f"worker loss detected and run re-queued {detection:.2f}s after SIGKILL")
    # Then it is re-queued as attempt 2 within lease TTL + 2 scan intervals
    assert detection <= LEASE_TTL + 2 * SCAN_INTERVAL, detection
    assert status["reason"] == "WorkerLost"
    # And it completes once, on the other worker, as attempt 2
    final = bed.wait_phase(namespace, "survivor", "Succeeded", "Failed", "Stopped", timeout=40)["status"]
    assert (final["phase"], final["attempt"], final["result"]) == ("Succeeded", 2, SLOW_TEXT)
    events = final_events(bed.redis_url, uid)
    assert [e.get("attempt") for e in events if e["type"] == "status" and e["status"] == "running"] == [1, 2]
    assert sum(1 for e in events if streams.is_terminal(e)) == 1 and streams.is_terminal(events[-1])
    attempt2 = events[next(i for i, e in enumerate(events) if e.get("status") == "running" and e["attempt"] == 2):]
    assert "".join(e["delta"] for e in attempt2 if e["type"] == streams.ASSISTANT) == SLOW_TEXT
    assert survivor.output().count('"run.started"') == 1
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["attempt"]) == ("Succeeded", 2)
    harness.wait_until(lambda: warning_events(bed, namespace, "survivor", "WorkerLost"), 10,
                       "a WorkerLost Warning Event")
    assert (sample(fast_operator, "agentrun_recoveries_total", reason="WorkerLost", action="requeued") or 0) >= 1


def test_a_run_out_of_attempts_fails_worker_lost_and_its_stream_ends(
    bed: harness.Bed, fast_operator: harness.Proc, namespace: str
) -> None:
    # Given a run allowed one attempt, streaming on a worker
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue, threads=2, **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "doomed", SLOW, maxAttempts=1))["metadata"]["uid"]
    bed.wait_phase(namespace, "doomed", "Running")
    harness.wait_until(lambda: streaming(bed, uid), 20, "the first streamed words")
    # When its worker is killed
    worker.kill()
    # Then the run fails with WorkerLost, saying how many attempts it had
    status = bed.wait_phase(namespace, "doomed", "Failed", "Succeeded", "Stopped", "Queued", timeout=30)["status"]
    assert (status["phase"], status["reason"], status["attempt"]) == ("Failed", "WorkerLost", 1), status
    assert "attempt 1 of 1" in status["message"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("False", "WorkerLost")
    # And the stream ends with the terminal status event, so readers do not hang
    last = terminal_event(bed, uid)
    assert (last["type"], last["status"], last["reason"]) == ("status", "failed", "WorkerLost")
    # And the database and the Events agree
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"]) == ("Failed", "WorkerLost")
    harness.wait_until(lambda: warning_events(bed, namespace, "doomed", "WorkerLost"), 10,
                       "a WorkerLost Warning Event")


def test_a_stop_requested_while_the_worker_is_gone_ends_the_run_stopped(
    bed: harness.Bed, fast_operator: harness.Proc, namespace: str
) -> None:
    # Given a run streaming on a worker that is then killed
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue, threads=2, **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "orphan", SLOW))["metadata"]["uid"]
    bed.wait_phase(namespace, "orphan", "Running")
    harness.wait_until(lambda: streaming(bed, uid), 20, "the first streamed words")
    worker.kill()
    # When a stop is requested while its lease is still running out
    bed.patch_spec(namespace, "orphan", {"stop": True})
    harness.wait_until(lambda: redis_call(bed.redis_url, lambda c: c.exists(keys.stop(uid))), 10, "the stop flag")
    # Then the operator ends it Stopped instead of re-queueing it
    status = bed.wait_phase(namespace, "orphan", "Stopped", "Failed", "Succeeded", "Queued", timeout=30)["status"]
    assert (status["phase"], status["reason"], status["attempt"]) == ("Stopped", "StopRequested", 1), status
    last = terminal_event(bed, uid)
    assert (last["type"], last["status"]) == ("status", "stopped")
    assert bed.db_row(uid)["status"] == "Stopped"  # type: ignore[index]


def test_a_queued_run_whose_message_was_lost_is_published_again_and_runs_once(
    bed: harness.Bed, fast_operator: harness.Proc, namespace: str
) -> None:
    # Given a queued run whose message is purged from the broker before any worker runs
    queue = f"agentrun.{namespace}.default"
    uid = bed.create(agentrun(namespace, "purged", [{"text": "still here"}]))["metadata"]["uid"]
    bed.wait_phase(namespace, "purged", "Queued")
    harness.wait_until(lambda: bed.queue_depth(queue) == 1, 10, "the message")
    conn = pika.BlockingConnection(pika.URLParameters(bed.amqp_url))
    try:
        conn.channel().queue_purge(queue)
    finally:
        conn.close()
    # When a worker starts, after the queued timeout the operator publishes the message again
    worker = bed.start_worker(queue, **WORKER_ENV)
    status = bed.wait_phase(namespace, "purged", "Succeeded", "Failed", timeout=30)["status"]
    # Then it ran once, as the same attempt
    assert (status["phase"], status["attempt"]) == ("Succeeded", 1)
    assert worker.output().count('"run.started"') == 1
    assert sum(1 for e in final_events(bed.redis_url, uid) if streams.is_terminal(e)) == 1
    harness.wait_until(lambda: warning_events(bed, namespace, "purged", "Republished"), 10,
                       "a Republished Warning Event")
    assert (sample(fast_operator, "agentrun_recoveries_total", reason="MessageLost", action="republished") or 0) >= 1


def test_the_metrics_endpoint_reports_pools_phases_finishes_and_dispatch_latency(
    bed: harness.Bed, fast_operator: harness.Proc, namespace: str
) -> None:
    # Given a worker on the default pool and a second pool without any worker
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "idle", "namespace": namespace}, "spec": {}})
    bed.start_worker(f"agentrun.{namespace}.default", **WORKER_ENV)
    # When one run executes on the default pool and one waits on the idle pool
    bed.create(agentrun(namespace, "busy", [{"text": " ".join(["w"] * 20), "chunkDelayMs": 100}]))
    bed.create(agentrun(namespace, "waiting", [{"text": "never"}], workerPool="idle"))
    bed.wait_phase(namespace, "waiting", "Queued")
    ns = {"namespace": namespace}
    # Then the pool gauges show one running run and one queued run
    harness.wait_until(lambda: sample(fast_operator, "agentrun_pool_running_runs", **ns, pool="default") == 1, 20,
                       "one running run in the default pool")
    assert sample(fast_operator, "agentrun_pool_queued_runs", **ns, pool="idle") == 1
    assert sample(fast_operator, "agentrun_runs", **ns, pool="idle", phase="Queued") == 1
    # And once the run ends: a finished run by phase and reason, one dispatch latency sample
    reason = bed.wait_phase(namespace, "busy", "Succeeded", "Failed")["status"]["reason"]
    harness.wait_until(
        lambda: sample(fast_operator, "agentrun_runs_finished_total", **ns, pool="default", phase="Succeeded",
                       reason=reason) == 1, 20, "the finished run to be counted")
    metrics = scrape(fast_operator)
    assert metrics[("agentrun_runs", frozenset({**ns, "pool": "default", "phase": "Succeeded"}.items()))] == 1
    assert metrics[("agentrun_pool_running_runs", frozenset({**ns, "pool": "default"}.items()))] == 0
    assert metrics[("agentrun_dispatch_latency_seconds_count", frozenset({**ns, "pool": "default"}.items()))] == 1
    latency = metrics[("agentrun_dispatch_latency_seconds_sum", frozenset({**ns, "pool": "default"}.items()))]
    assert 0 <= latency < 30
    assert metrics[("agentrun_scans_total", frozenset())] >= 1
    # And every documented family is exposed (with HELP and TYPE even before a first sample)
    assert families(fast_operator) >= {
        "agentrun_runs", "agentrun_pool_queued_runs", "agentrun_pool_running_runs", "agentrun_runs_finished",
        "agentrun_dispatch_latency_seconds", "agentrun_reconcile_errors", "agentrun_recoveries",
        "agentrun_runs_deleted", "agentrun_scans", "agentrun_pool_desired_replicas", "agentrun_pool_replicas",
        "agentrun_pool_ready_replicas", "agentrun_pool_capacity_runs"}
