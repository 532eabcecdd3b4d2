"""What the operator should do, decided apart from doing it: pure functions returning actions.

The recovery scan (``scanning``) and the autoscaler (``scaling``) gather what they know — the
index of runs, which leases and stop flags exist, which pools exist, the backlog — and ask
these functions what to do; they then do it (Redis, the API server, the broker). Nothing here
performs I/O or reads the clock: ``now`` (seconds, the caller's clock) is passed in, so the
decision tables are tested with a virtual clock (``tests/operator/test_decisions.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Mapping

from agentrun import phases, reasons, timestamps, views
from agentrun_operator import deployments

# -- the runs the scan looks after ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunView:
    """What the scan needs to know about one AgentRun, kept current by a kopf index."""

    uid: str
    namespace: str
    name: str
    phase: str
    pool: str
    attempt: int
    max_attempts: int
    created_at: str | None
    queued_at: str | None
    timeout_seconds: int | float | None = None
    finished_at: str | None = None
    ttl_after_finished: int | None = None


def view(run: views.AgentRun) -> RunView | None:
    """The index entry of an AgentRun, or None when the scan has nothing to do with it
    (not dispatched yet, or finished without a TTL)."""
    phase, ttl = run.status.phase, run.spec.ttl_after_finished
    if not phase or not run.uid or not run.namespace:
        return None
    if phases.is_terminal(phase) and ttl is None:
        return None
    return RunView(
        uid=run.uid, namespace=run.namespace, name=run.name, phase=phase, pool=run.spec.pool,
        attempt=run.status.attempt or 1, max_attempts=run.spec.max_attempts, created_at=run.created_at,
        queued_at=run.status.queued_at, timeout_seconds=run.spec.timeout_seconds,
        finished_at=run.status.finished_at, ttl_after_finished=ttl,
    )


def past_deadline(v: RunView, now: float) -> bool:
    age = timestamps.age_seconds(v.created_at, now)
    return v.timeout_seconds is not None and age is not None and age >= v.timeout_seconds


# -- what one scan does -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recover:
    """A live run without a lease: its worker is gone."""

    run: RunView
    stop_requested: bool


@dataclasses.dataclass(frozen=True)
class Expire:
    """A run no worker started: past its deadline, or its pool is gone."""

    run: RunView
    pool_deleted: bool = False


@dataclasses.dataclass(frozen=True)
class Republish:
    """A ``Queued`` run no worker took: its message may be lost."""

    run: RunView


@dataclasses.dataclass(frozen=True)
class Delete:
    """A finished run past its ``ttlSecondsAfterFinished``."""

    run: RunView


ScanAction = Recover | Expire | Republish | Delete


@dataclasses.dataclass(frozen=True)
class Leases:
    """What one pipelined Redis round trip said about the live runs: by uid, whether the lease
    exists and whether a stop was requested. None for a run not checked."""

    held: Mapping[str, bool]
    stop_requested: Mapping[str, bool]


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    actions: list[ScanAction]
    pool_missing: dict[tuple[str, str], float]
    """Since when each pool some waiting run names has been missing (the next scan's memory)."""
    republished: dict[tuple[str, int], float]
    """When each current ``(uid, attempt)`` was last re-published (pruned of the runs gone)."""


def scan(
    runs: Iterable[RunView],
    *,
    now: float,
    leases: Leases | None,
    pools: Container[tuple[str, str]],
    pool_missing: Mapping[tuple[str, str], float],
    republished: Mapping[tuple[str, int], float],
    queued_timeout_seconds: float,
    pool_missing_grace_seconds: float,
) -> ScanPlan:
    """What to do about each run, in the order it is to be done: lost workers first.

    ``leases`` is None when the live runs' leases were not checked (Redis restarted within a
    lease TTL: their workers are taking their leases back).
    """
    runs = list(runs)
    actions: list[ScanAction] = []
    if leases is not None:
        for v in runs:
            if phases.is_active(v.phase) and v.uid in leases.held and not leases.held[v.uid]:
                actions.append(Recover(v, stop_requested=bool(leases.stop_requested.get(v.uid))))
    missing = dict(pool_missing)
    for v in runs:
        if phases.is_terminal(v.phase):
            finished = timestamps.epoch(v.finished_at)
            if v.ttl_after_finished is not None and finished is not None and now - finished >= v.ttl_after_finished:
                actions.append(Delete(v))
        elif phases.is_unstarted(v.phase) and past_deadline(v, now):
            actions.append(Expire(v))
        elif phases.is_unstarted(v.phase) and _pool_gone(v, now, pools, missing, pool_missing_grace_seconds):
            actions.append(Expire(v, pool_deleted=True))
        elif v.phase == phases.Phase.QUEUED:
            since = max(timestamps.epoch(v.queued_at) or now, republished.get((v.uid, v.attempt), 0.0))
            if now - since >= queued_timeout_seconds:
                actions.append(Republish(v))
    waiting = {(v.namespace, v.pool) for v in runs if phases.is_unstarted(v.phase)}
    missing = {k: t for k, t in missing.items() if k in waiting and k not in pools}
    current = {(v.uid, v.attempt) for v in runs}
    return ScanPlan(actions=actions, pool_missing=missing,
                    republished={k: t for k, t in republished.items() if k in current})


def _pool_gone(v: RunView, now: float, pools: Container[tuple[str, str]], missing: dict[tuple[str, str], float],
               grace_seconds: float) -> bool:
    """Whether the run's pool has been missing from the pool index for the whole grace
    (``missing`` learns since when a pool is missing)."""
    key = (v.namespace, v.pool)
    if key in pools:
        return False
    since = missing.setdefault(key, now)
    return now - since >= grace_seconds


# -- what to do with a run that lost its worker, or never got one ------------------------------


@dataclasses.dataclass(frozen=True)
class End:
    """End the run: ``phase``/``reason`` with ``message``."""

    phase: phases.Phase
    reason: reasons.Reason
    message: str
    metric: tuple[str, str]
    """``agentrun_operator_recoveries_total``'s ``(reason, action)``: what went wrong, what was done."""
    action: str
    """What the log line calls it."""


@dataclasses.dataclass(frozen=True)
class Requeue:
    """Queue the run again as ``attempt``."""

    attempt: int
    message: str
    """The status message."""
    event: str
    """The Warning Event's message."""


def recovery(v: RunView, *, stop_requested: bool, worker: str, now: float) -> End | Requeue:
    """A live run whose worker is lost (no lease; re-read: still live at ``v.attempt``)."""
    if stop_requested:
        return End(phases.Phase.STOPPED, reasons.Reason.STOP_REQUESTED,
                   f"stopped on request; its worker {worker} was lost before it confirmed the stop",
                   metric=(reasons.Reason.WORKER_LOST, "stopped"), action="stopped")
    if past_deadline(v, now):
        return End(phases.Phase.FAILED, reasons.Reason.DEADLINE_EXCEEDED,
                   f"the run exceeded timeoutSeconds={v.timeout_seconds} "
                   f"(its worker {worker} was lost on attempt {v.attempt})",
                   metric=(reasons.Reason.DEADLINE_EXCEEDED, "failed"), action="deadline")
    if v.attempt >= v.max_attempts:
        return End(phases.Phase.FAILED, reasons.Reason.WORKER_LOST,
                   f"the worker was lost on attempt {v.attempt} of {v.max_attempts} "
                   f"(last worker {worker}); no attempts left",
                   metric=(reasons.Reason.WORKER_LOST, "failed"), action="failed")
    return Requeue(
        attempt=v.attempt + 1,
        message=f"worker {worker} lost on attempt {v.attempt}; re-queued as attempt {v.attempt + 1}",
        event=f"worker lost on attempt {v.attempt}; re-queued as attempt {v.attempt + 1} of {v.max_attempts}",
    )


def expiry(v: RunView, *, pool_deleted: bool) -> End:
    """A run that no worker started (re-read: still Pending/Queued)."""
    if pool_deleted:
        return End(phases.Phase.FAILED, reasons.Reason.POOL_DELETED,
                   f"WorkerPool {v.pool} was deleted while the run waited in its queue; "
                   "create the pool again and re-submit the run",
                   metric=(reasons.Reason.POOL_DELETED, "failed"), action="pool_deleted")
    return End(phases.Phase.FAILED, reasons.Reason.DEADLINE_EXCEEDED,
               f"no worker started the run within timeoutSeconds={v.timeout_seconds}",
               metric=(reasons.Reason.DEADLINE_EXCEEDED, "failed"), action="deadline")


# -- how many workers a pool wants ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scale:
    """One autoscaler pass's decision for one pool."""

    report: dict[str, int]
    """The pool's ``status`` (queued, running, brokerMessages, desiredReplicas, replicas…)."""
    desired: int | None = None
    """What the backlog asks for (operator mode); None in hpa/keda mode."""
    target: int | None = None
    """``desired`` after scale-down stabilization: what the Deployment should have."""
    patch: bool = False
    """Whether the Deployment's replicas must be written."""


def scale(
    spec: views.PoolSpec,
    *,
    queued: int,
    running: int,
    broker_messages: tuple[int, int] | None,
    stabilizer: deployments.Stabilizer,
    now: float,
    applied: int | None,
    deployment: tuple[int, int, int] | None,
) -> Scale:
    """The replicas and status of a pool. ``broker_messages`` is the queue's (ready,
    unacknowledged), when known; ``applied`` what this operator last wrote; ``deployment`` the
    Deployment's (spec replicas, replicas, ready replicas) when it exists. ``stabilizer``
    remembers the pool's recent recommendations (it is the one piece of state it updates)."""
    report = {"queued": queued, "running": running}
    if broker_messages is not None:
        report["brokerMessages"] = sum(broker_messages)
    desired = target = None
    patch = False
    if spec.autoscaling_mode == "operator":
        # the broker may hold runs the operator does not know of: size for the larger count
        extra = max(0, sum(broker_messages) - queued - running) if broker_messages is not None else 0
        desired = deployments.desired_replicas(queued + extra, running, runs_per_replica=spec.runs_per_replica,
                                               min_replicas=spec.min_replicas, max_replicas=spec.max_replicas)
        stabilizer.window_seconds = spec.scale_down_stabilization_seconds
        target = stabilizer.recommend(desired, now)
        report["desiredReplicas"] = target
        patch = applied != target or (deployment is not None and deployment[0] != target)
    if deployment is not None:
        report["replicas"], report["readyReplicas"] = deployment[1], deployment[2]
    return Scale(report=report, desired=desired, target=target, patch=patch)
