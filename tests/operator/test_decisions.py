"""The operator's decision tables, without any API, Redis or broker: pure functions on a
virtual clock (``now`` is passed in). The seams that carry them out are tested end to end
(tests/e2e/test_recovery.py, test_lifecycle.py, test_autoscalers.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from agentrun_operator import decisions, deployments

from agentrun import phases, views

T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
CREATED = "2025-01-01T00:00:00Z"


def run(phase: str = "Queued", **changes: Any) -> decisions.RunView:
    base = decisions.RunView(uid="u1", namespace="ns", name="r", phase=phase, pool="default", attempt=1,
                             max_attempts=3, created_at=CREATED, queued_at=CREATED)
    return dataclasses.replace(base, **changes)


def plan(runs: list[decisions.RunView], *, now: float, held: dict[str, bool] | None = None,
         stops: dict[str, bool] | None = None, pools: set[tuple[str, str]] | None = None,
         pool_missing: dict[tuple[str, str], float] | None = None,
         republished: dict[tuple[str, int], float] | None = None) -> decisions.ScanPlan:
    leases = None if held is None else decisions.Leases(held=held, stop_requested=stops or {})
    return decisions.scan(runs, now=now, leases=leases, pools={("ns", "default")} if pools is None else pools,
                          pool_missing=pool_missing or {}, republished=republished or {},
                          queued_timeout_seconds=300, pool_missing_grace_seconds=30)


# -- the index entry ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "spec", "indexed"), [
    ({}, {}, False),                                              # not dispatched yet
    ({"phase": "Queued", "attempt": 1}, {}, True),
    ({"phase": "Running", "attempt": 2}, {}, True),
    ({"phase": "Succeeded"}, {}, False),                          # finished, nothing to delete later
    ({"phase": "Failed"}, {"ttlSecondsAfterFinished": 60}, True),  # finished, deleted after its TTL
])
def test_which_runs_the_scan_indexes(status: dict[str, Any], spec: dict[str, Any], indexed: bool) -> None:
    body = {"metadata": {"uid": "u1", "namespace": "ns", "name": "r", "creationTimestamp": CREATED},
            "spec": spec, "status": status}
    found = decisions.view(views.AgentRun(body))
    assert (found is not None) == indexed
    if found is not None:
        assert (found.pool, found.max_attempts, found.attempt >= 1) == ("default", 3, True)


# -- one scan ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("v", "held", "stops", "expected"), [
    # a live run whose lease is held: nothing
    (run("Running"), {"u1": True}, {}, []),
    # a live run without a lease: its worker is lost
    (run("Running"), {"u1": False}, {}, [decisions.Recover(run("Running"), stop_requested=False)]),
    (run("Stopping"), {"u1": False}, {"u1": True}, [decisions.Recover(run("Stopping"), stop_requested=True)]),
])
def test_lost_workers(v: decisions.RunView, held: dict[str, bool], stops: dict[str, bool],
                      expected: list[decisions.ScanAction]) -> None:
    assert plan([v], now=T0 + 5, held=held, stops=stops).actions == expected


def test_right_after_a_redis_restart_no_lease_is_taken_for_lost() -> None:
    assert plan([run("Running")], now=T0 + 5, held=None).actions == []


@pytest.mark.parametrize(("v", "now", "expected"), [
    # a queued run within its timeout and the re-publish period: nothing
    (run("Queued", timeout_seconds=60), T0 + 59, []),
    # a run no worker started within timeoutSeconds ends (Pending too)
    (run("Queued", timeout_seconds=60), T0 + 60, [decisions.Expire(run("Queued", timeout_seconds=60))]),
    (run("Pending", timeout_seconds=60), T0 + 61, [decisions.Expire(run("Pending", timeout_seconds=60))]),
    # a queued run nobody took for queued_timeout_seconds is published again
    (run("Queued"), T0 + 299, []),
    (run("Queued"), T0 + 300, [decisions.Republish(run("Queued"))]),
    # a running run's deadline is its worker's business
    (run("Running", timeout_seconds=60), T0 + 600, []),
    # a finished run is deleted at its TTL, not before
    (run("Succeeded", finished_at="2025-01-01T00:01:00Z", ttl_after_finished=60), T0 + 119, []),
    (run("Succeeded", finished_at="2025-01-01T00:01:00Z", ttl_after_finished=60), T0 + 120,
     [decisions.Delete(run("Succeeded", finished_at="2025-01-01T00:01:00Z", ttl_after_finished=60))]),
])
def test_the_lifecycle_on_a_virtual_clock(v: decisions.RunView, now: float,
                                          expected: list[decisions.ScanAction]) -> None:
    assert plan([v], now=now, held={}).actions == expected


def test_a_run_is_republished_once_per_period() -> None:
    # Given a run re-published at T0 + 300
    first = plan([run("Queued")], now=T0 + 300, held={})
    assert first.actions == [decisions.Republish(run("Queued"))]
    memory = {("u1", 1): T0 + 300}
    # Then not again before T0 + 600, and again at T0 + 600
    assert plan([run("Queued")], now=T0 + 599, held={}, republished=memory).actions == []
    assert plan([run("Queued")], now=T0 + 600, held={}, republished=memory).actions == [
        decisions.Republish(run("Queued"))]
    # And a run that left the index leaves the memory
    assert plan([], now=T0 + 600, held={}, republished=memory).republished == {}


def test_a_deleted_pool_fails_its_waiting_runs_after_the_grace() -> None:
    v = run("Queued", queued_at="2025-01-01T00:10:00Z")
    # Given the pool missing from the index at the first scan
    first = plan([v], now=T0 + 10, held={}, pools=set())
    assert first.actions == [] and first.pool_missing == {("ns", "default"): T0 + 10}
    # When the grace has not passed, nothing; when it has, the run ends PoolDeleted
    assert plan([v], now=T0 + 39, held={}, pools=set(), pool_missing=first.pool_missing).actions == []
    assert plan([v], now=T0 + 40, held={}, pools=set(), pool_missing=first.pool_missing).actions == [
        decisions.Expire(v, pool_deleted=True)]
    # And a pool created again is forgotten
    assert plan([v], now=T0 + 41, held={}, pool_missing=first.pool_missing).pool_missing == {}


def test_lost_workers_come_first() -> None:
    lost, stale = run("Running", uid="a"), run("Queued", uid="b", timeout_seconds=1)
    actions = plan([stale, lost], now=T0 + 10, held={"a": False}).actions
    assert [type(a) for a in actions] == [decisions.Recover, decisions.Expire]


# -- recovering a run whose worker is lost -----------------------------------------------------


@pytest.mark.parametrize(("v", "stop", "now", "phase", "reason", "metric"), [
    (run("Running"), True, T0 + 5, phases.Phase.STOPPED, "StopRequested", ("WorkerLost", "stopped")),
    (run("Running", timeout_seconds=60), False, T0 + 60, phases.Phase.FAILED, "DeadlineExceeded",
     ("DeadlineExceeded", "failed")),
    (run("Running", attempt=3, max_attempts=3), False, T0 + 5, phases.Phase.FAILED, "WorkerLost",
     ("WorkerLost", "failed")),
    # a stop wins over the deadline and the last attempt
    (run("Running", attempt=3, max_attempts=3, timeout_seconds=1), True, T0 + 5, phases.Phase.STOPPED,
     "StopRequested", ("WorkerLost", "stopped")),
])
def test_a_lost_run_ends(v: decisions.RunView, stop: bool, now: float, phase: phases.Phase, reason: str,
                         metric: tuple[str, str]) -> None:
    decided = decisions.recovery(v, stop_requested=stop, worker="pod-1", now=now)
    assert isinstance(decided, decisions.End)
    assert (decided.phase, decided.reason, decided.metric) == (phase, reason, metric)
    assert "pod-1" in decided.message


@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 3), (2, 3), (1, 2)])
def test_a_lost_run_with_attempts_left_is_requeued(attempt: int, max_attempts: int) -> None:
    v = run("Running", attempt=attempt, max_attempts=max_attempts, timeout_seconds=600)
    decided = decisions.recovery(v, stop_requested=False, worker="pod-1", now=T0 + 5)
    assert decided == decisions.Requeue(
        attempt=attempt + 1,
        message=f"worker pod-1 lost on attempt {attempt}; re-queued as attempt {attempt + 1}",
        event=f"worker lost on attempt {attempt}; re-queued as attempt {attempt + 1} of {max_attempts}")


@pytest.mark.parametrize(("pool_deleted", "reason", "text"), [
    (False, "DeadlineExceeded", "no worker started the run within timeoutSeconds=60"),
    (True, "PoolDeleted", "WorkerPool default was deleted while the run waited in its queue"),
])
def test_a_run_never_started_ends(pool_deleted: bool, reason: str, text: str) -> None:
    decided = decisions.expiry(run("Queued", timeout_seconds=60), pool_deleted=pool_deleted)
    assert (decided.phase, decided.reason) == (phases.Phase.FAILED, reason) and decided.message.startswith(text)


# -- scaling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "queued", "running", "broker", "desired"), [
    ({}, 0, 0, None, 1),                                     # minReplicas 1
    ({"minReplicas": 0}, 0, 0, None, 0),                     # scale to zero
    ({}, 9, 8, None, 3),                                     # ceil(17 / 8)
    ({"runsPerReplica": 2, "maxReplicas": 4}, 20, 0, None, 4),  # clamped to maxReplicas
    ({}, 1, 0, (30, 2), 4),                                  # the broker knows of more: ceil(32 / 8)
    ({}, 10, 0, (2, 0), 2),                                  # the broker knows of fewer: the operator's count
])
def test_the_desired_replicas(spec: dict[str, Any], queued: int, running: int, broker: tuple[int, int] | None,
                              desired: int) -> None:
    decided = decisions.scale(views.PoolSpec(spec), queued=queued, running=running, broker_messages=broker,
                              stabilizer=deployments.Stabilizer(300), now=T0, applied=None, deployment=None)
    assert (decided.desired, decided.target, decided.patch) == (desired, desired, True)
    assert decided.report["desiredReplicas"] == desired and decided.report["queued"] == queued


def test_scale_down_waits_for_the_stabilization_window() -> None:
    stabilizer = deployments.Stabilizer(300)
    pool = views.PoolSpec({"scaleDownStabilizationSeconds": 60})

    def at(now: float, queued: int, applied: int | None) -> decisions.Scale:
        return decisions.scale(pool, queued=queued, running=0, broker_messages=None, stabilizer=stabilizer,
                               now=now, applied=applied, deployment=(applied or 0, applied or 0, applied or 0))

    assert at(T0, 40, None).target == 5           # up at once
    held = at(T0 + 30, 0, 5)
    assert (held.desired, held.target, held.patch) == (1, 5, False)  # down held within the window
    down = at(T0 + 61, 0, 5)
    assert (down.target, down.patch) == (1, True)  # and taken after it


@pytest.mark.parametrize("mode", ["hpa", "keda"])
def test_other_autoscalers_only_get_the_report(mode: str) -> None:
    decided = decisions.scale(views.PoolSpec({"autoscaling": {"mode": mode}}), queued=3, running=1,
                              broker_messages=(4, 1), stabilizer=deployments.Stabilizer(300), now=T0, applied=None,
                              deployment=(2, 2, 1))
    assert decided == decisions.Scale(report={"queued": 3, "running": 1, "brokerMessages": 5, "replicas": 2,
                                              "readyReplicas": 1})


def test_a_deployment_changed_by_hand_is_set_back() -> None:
    decided = decisions.scale(views.PoolSpec({}), queued=0, running=0, broker_messages=None,
                              stabilizer=deployments.Stabilizer(300), now=T0, applied=1, deployment=(7, 7, 7))
    assert (decided.target, decided.patch) == (1, True)
