"""Lifecycle end to end: TTL, deadlines, deletion of a live run, a pool deleted under its runs.

Real kopf, real Dramatiq worker processes, RabbitMQ, Redis and PostgreSQL; the operator scans
every second (the ``fast_operator`` of the recovery tests) so small numbers keep this quick.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentrun import kube, streams
from tests.e2e import harness
from tests.e2e.scenarios import (
    OPERATOR_ENV,
    POOL_MISSING_GRACE,
    SLOW,
    WORKER_ENV,
    agentrun,
    events_of,
    sample,
    streaming,
    terminal_event,
    warning_events,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("fast_operator")]

QUICK = [{"text": "done quickly"}]


def gone(bed: harness.Bed, namespace: str, name: str) -> bool:
    try:
        bed.get_run(namespace, name)
    except kube.ApiError as exc:
        return kube.is_not_found(exc)
    return False


def test_a_finished_run_is_deleted_after_its_ttl_and_its_database_row_stays(
    bed: harness.Bed, namespace: str
) -> None:
    # Given a worker and a run that asks to be deleted one second after it ends
    bed.start_worker(f"agentrun.{namespace}.default", **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "short-lived", QUICK, ttlSecondsAfterFinished=1))["metadata"]["uid"]
    # When it succeeds
    finished = bed.wait_phase(namespace, "short-lived", "Succeeded", "Failed")["status"]
    assert finished["phase"] == "Succeeded"
    # Then the AgentRun is deleted
    harness.wait_until(lambda: gone(bed, namespace, "short-lived"), 20, "the AgentRun to be deleted")
    # And its database row and stream stay
    row = bed.db_row(uid)
    assert row is not None and row["status"] == "Succeeded"
    assert streams.is_terminal(terminal_event(bed, uid))


def test_a_run_no_worker_starts_before_its_deadline_fails_deadline_exceeded(
    bed: harness.Bed, namespace: str
) -> None:
    # Given a run with a two-second deadline and no worker on its pool
    queue = f"agentrun.{namespace}.default"
    uid = bed.create(agentrun(namespace, "too-late", QUICK, timeoutSeconds=2))["metadata"]["uid"]
    bed.wait_phase(namespace, "too-late", "Queued")
    # When the deadline passes, the operator ends it
    status = bed.wait_phase(namespace, "too-late", "Failed", "Succeeded", timeout=20)["status"]
    # Then it failed with DeadlineExceeded everywhere: resource, stream, database, Events
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded"), status
    assert "timeoutSeconds=2" in status["message"]
    last = terminal_event(bed, uid)
    assert (last["type"], last["status"], last["reason"]) == ("status", "failed", "DeadlineExceeded")
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"]) == ("Failed", "DeadlineExceeded")
    harness.wait_until(lambda: warning_events(bed, namespace, "too-late", "DeadlineExceeded"), 10,
                       "a DeadlineExceeded Warning Event")
    # And a worker that starts afterwards drops the message without running it
    worker = bed.start_worker(queue, **WORKER_ENV)
    harness.wait_until(lambda: bed.queue_depth(queue) == 0, 15, "the message to be consumed")
    harness.wait_until(lambda: '"run.skipped"' in worker.output(), 10, "the worker to skip the run")
    assert '"run.started"' not in worker.output()
    assert bed.get_run(namespace, "too-late")["status"]["phase"] == "Failed"


def terminal(bed: harness.Bed, uid: str) -> dict[str, Any] | None:
    found = events_of(bed, uid)
    return found[-1] if found and streams.is_terminal(found[-1]) else None


def deployment(bed: harness.Bed, namespace: str, name: str) -> dict[str, Any] | None:
    import lightkube.resources.apps_v1

    try:
        return kube.to_dict(bed.api.get(lightkube.resources.apps_v1.Deployment, name, namespace=namespace))
    except kube.ApiError as exc:
        if kube.is_not_found(exc):
            return None
        raise


def replicas(bed: harness.Bed, namespace: str) -> int | None:
    found = deployment(bed, namespace, "scaled-workers")
    return None if found is None else int(found["spec"].get("replicas", -1))


def test_a_pool_s_deployment_follows_the_backlog_up_at_once_and_down_after_stabilization(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a pool of 0 to 3 replicas, 2 runs per replica, a 4 s scale-down window, and no worker
    window = 4
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "scaled", "namespace": namespace},
                "spec": {"minReplicas": 0, "maxReplicas": 3, "runsPerReplica": 2, "processes": 2, "threads": 3,
                         "scaleDownStabilizationSeconds": window}})
    # Then its Deployment exists, owned by the pool, bound to the pool's queue, at zero replicas
    harness.wait_until(lambda: replicas(bed, namespace) == 0, 20, "the pool's Deployment at 0 replicas")
    found = deployment(bed, namespace, "scaled-workers")
    assert found is not None
    assert found["metadata"]["ownerReferences"][0]["kind"] == "WorkerPool"
    worker = found["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][2:6] == ["--processes", "2", "--threads", "3"]
    assert {"name": "AGENTRUN_QUEUE", "value": f"agentrun.{namespace}.scaled"} in worker["env"]
    # When a first run is queued, the pool wakes from zero
    bed.create(agentrun(namespace, "r0", QUICK, workerPool="scaled"))
    harness.wait_until(lambda: replicas(bed, namespace) == 1, 20, "one replica for one queued run")
    # And five queued runs need ceil(5 / 2) = 3 replicas; seven are capped at maxReplicas 3
    for i in range(1, 5):
        bed.create(agentrun(namespace, f"r{i}", QUICK, workerPool="scaled"))
    harness.wait_until(lambda: replicas(bed, namespace) == 3, 20, "three replicas for five queued runs")
    for i in range(5, 7):
        bed.create(agentrun(namespace, f"r{i}", QUICK, workerPool="scaled"))
    harness.wait_until(
        lambda: (bed.api.get(kube.WorkerPool, "scaled", namespace=namespace).to_dict().get("status") or {})
        .get("queued") == 7, 20, "the pool status to count seven queued runs")
    assert replicas(bed, namespace) == 3
    assert sample(operator.proc, "agentrun_pool_desired_replicas", namespace=namespace, pool="scaled") == 3
    assert sample(operator.proc, "agentrun_pool_queued_runs", namespace=namespace, pool="scaled") == 7
    # When the backlog drains, the pool shrinks only after the stabilization window, down to zero
    for i in range(7):
        bed.api.delete(kube.AgentRun, f"r{i}", namespace=namespace)
    drained = time.monotonic()
    harness.wait_until(lambda: replicas(bed, namespace) == 0, 30, "the pool to scale back to zero")
    # (held for the window, less one autoscaler interval of phase; without the hold it takes < 1 s)
    assert time.monotonic() - drained >= window / 2


def test_a_run_deleted_while_running_is_stopped_at_once_and_its_record_says_so(
    bed: harness.Bed, namespace: str
) -> None:
    # Given a run streaming on a worker
    bed.start_worker(f"agentrun.{namespace}.default", **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "doomed", SLOW))["metadata"]["uid"]
    harness.wait_until(lambda: streaming(bed, uid), 20, "the run to stream")
    # And nothing on it that would hold a delete (no finalizer while it lives)
    assert not bed.get_run(namespace, "doomed")["metadata"].get("finalizers")
    # When the AgentRun is deleted, it is gone at once
    bed.api.delete(kube.AgentRun, "doomed", namespace=namespace)
    assert gone(bed, namespace, "doomed")
    # Then the worker stops the run well before its script would end (~4 s)
    last = harness.wait_until(lambda: terminal(bed, uid), 10, "the run's terminal event")
    assert (last["status"], last["reason"]) == ("stopped", "RunDeleted"), last
    assert last["message"] == "stopped because its AgentRun was deleted"
    assert not any(e["type"] == "assistant" and "word39" in e.get("text", "") for e in events_of(bed, uid))
    # And the database keeps the record of why it ended
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"]) == ("Stopped", "RunDeleted"), row


def test_a_run_deleted_while_the_operator_is_down_is_stopped_by_its_worker(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a run streaming on a worker that writes a heartbeat every second, and no operator
    bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_HEARTBEAT_SECONDS="1", **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "orphaned", SLOW))["metadata"]["uid"]
    harness.wait_until(lambda: streaming(bed, uid), 20, "the run to stream")
    with operator.down(**OPERATOR_ENV):
        # When the AgentRun is deleted, the delete does not wait for the missing operator
        bed.api.delete(kube.AgentRun, "orphaned", namespace=namespace)
        assert gone(bed, namespace, "orphaned")
        # Then the worker notices at its next heartbeat and stops the run
        last = harness.wait_until(lambda: terminal(bed, uid), 15, "the run's terminal event")
        assert (last["status"], last["reason"]) == ("stopped", "RunDeleted"), last
        row = bed.db_row(uid)
        assert row is not None and (row["status"], row["reason"]) == ("Stopped", "RunDeleted"), row


def test_a_stop_set_while_the_operator_is_down_is_honoured_by_the_worker_at_its_heartbeat(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # Given a run streaming on a worker that writes a heartbeat every second, and no operator
    # to turn spec.stop into a stop request in Redis
    bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_HEARTBEAT_SECONDS="1", **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "unheard", SLOW))["metadata"]["uid"]
    harness.wait_until(lambda: streaming(bed, uid), 20, "the run to stream")
    with operator.down(**OPERATOR_ENV):
        # When the stop is set on the resource (kubectl patch --type merge -p '{"spec":{"stop":true}}')
        bed.patch_spec(namespace, "unheard", {"stop": True})
        # Then the worker reads it at its next heartbeat and stops the run well before its end
        last = harness.wait_until(lambda: terminal(bed, uid), 15, "the run's terminal event")
        assert (last["status"], last["reason"]) == ("stopped", "StopRequested"), last
        assert not any(e["type"] == "assistant" and "word39" in e.get("text", "") for e in events_of(bed, uid))
        status = bed.wait_phase(namespace, "unheard", "Stopped", "Succeeded", "Failed")["status"]
        assert (status["phase"], status["reason"]) == ("Stopped", "StopRequested"), status


def test_queued_runs_of_a_deleted_pool_fail_pool_deleted_after_the_grace(bed: harness.Bed, namespace: str) -> None:
    # Given a pool with no worker and a run queued on it
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "short-lived", "namespace": namespace}, "spec": {}})
    uid = bed.create(agentrun(namespace, "stranded", QUICK, workerPool="short-lived"))["metadata"]["uid"]
    bed.wait_phase(namespace, "stranded", "Queued")
    # When the pool is deleted
    bed.api.delete(kube.WorkerPool, "short-lived", namespace=namespace)
    deleted = time.monotonic()
    # Then, after the grace, the run fails PoolDeleted everywhere, saying what to do
    status = bed.wait_phase(namespace, "stranded", "Failed", "Succeeded", timeout=30)["status"]
    assert time.monotonic() - deleted >= POOL_MISSING_GRACE / 2
    assert (status["phase"], status["reason"]) == ("Failed", "PoolDeleted"), status
    assert "WorkerPool short-lived was deleted" in status["message"]
    last = terminal_event(bed, uid)
    assert (last["type"], last["status"], last["reason"]) == ("status", "failed", "PoolDeleted")
    row = bed.db_row(uid)
    assert row is not None and (row["status"], row["reason"]) == ("Failed", "PoolDeleted")
    harness.wait_until(lambda: warning_events(bed, namespace, "stranded", "PoolDeleted"), 10,
                       "a PoolDeleted Warning Event")
