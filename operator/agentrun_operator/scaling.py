"""The autoscaler of WorkerPools in ``autoscaling.mode: operator``.

One background task (started by ``startup``, cancelled on clean-up) that every
``autoscale_interval_seconds`` computes each pool's replicas from what the operator knows —
queued and running runs from the ``run_phases`` index — with
:func:`agentrun_operator.deployments.desired_replicas`, holds scale-downs for the pool's
``scaleDownStabilizationSeconds`` (:class:`agentrun_operator.deployments.Stabilizer`), and
writes the Deployment's ``spec.replicas`` and the pool's status only when a number changes.
The numbers are decided by :func:`agentrun_operator.decisions.scale` (a pure function); this
module gathers what it needs and writes what it decided.
Pools in ``hpa`` or ``keda`` mode only get their status (queued, running) written. A run's
phase change nudges the loop (:meth:`Autoscaler.nudge`), so a backlog is answered within
``autoscale_coalesce_seconds`` rather than at the next interval.

In every mode each worker pod's ``controller.kubernetes.io/pod-deletion-cost`` is kept equal
to the number of runs it executes (from ``status.workerInstance``, whose first part is the
pod name): when a Deployment shrinks, its ReplicaSet removes the pods of lowest cost first,
so idle workers go before busy ones. The pass writes the costs before it changes replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import kopf
import lightkube
import lightkube.resources.core_v1
import lightkube.types
import structlog

from agentrun import kube, message, phases, views
from agentrun_operator import brokerstats, config, decisions, deployments, metrics, workerpools

logger = structlog.get_logger(__name__)
Pod = lightkube.resources.core_v1.Pod


def backlog(run_phases: kopf.Index[tuple[str, str, str], str], namespace: str, pool: str) -> tuple[int, int]:
    """``(queued, running)`` runs of a pool, from the index."""
    queued = sum(len(run_phases.get((namespace, pool, p), [])) for p in phases.UNSTARTED)
    running = sum(len(run_phases.get((namespace, pool, p), [])) for p in phases.ACTIVE)
    return queued, running


class Autoscaler:
    def __init__(
        self,
        *,
        api: lightkube.AsyncClient,
        pools: kopf.Index[tuple[str, str], dict[str, Any]],
        run_phases: kopf.Index[tuple[str, str, str], str],
        pool_deployments: kopf.Index[tuple[str, str], tuple[int, int, int]],
        op: config.OperatorSettings,
        pool_pods: kopf.Index[tuple[str, str], tuple[str, str | None]] | None = None,
        run_pods: kopf.Index[tuple[str, str], str] | None = None,
        broker_stats: brokerstats.BrokerStats | None = None,
    ) -> None:
        self._api = api
        self._pools = pools
        self._runs = run_phases
        self._deployments = pool_deployments
        self._op = op
        self._pods = pool_pods
        self._broker_stats = broker_stats
        self._wake = asyncio.Event()
        self._depths: dict[str, tuple[int, int]] = {}
        self._run_pods = run_pods
        self._stabilizers: dict[tuple[str, str], deployments.Stabilizer] = {}
        self._applied: dict[tuple[str, str], int] = {}
        self._reported: dict[tuple[str, str], dict[str, int]] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                await self.pass_once(time.monotonic())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die; the next pass retries
                metrics.RECONCILE_ERRORS.labels("autoscale").inc()
                logger.exception("autoscale.failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._op.autoscale_interval_seconds)
            # a burst of changes (a thousand runs created at once) makes one pass, not a thousand
            await asyncio.sleep(self._op.autoscale_coalesce_seconds)
            self._wake.clear()

    def nudge(self) -> None:
        """A run changed phase: pass again now rather than at the next interval."""
        self._wake.set()

    async def pass_once(self, now: float) -> None:
        seen: set[tuple[str, str]] = set()
        if self._broker_stats is not None:
            self._depths = await self._broker_stats.depths()
        for key, found in list(self._pools.items()):
            for spec in found:
                seen.add(key)
                try:
                    await self._mark_costs(key)
                    await self._scale(key, spec, now)
                except Exception as exc:
                    metrics.RECONCILE_ERRORS.labels("autoscale").inc()
                    logger.warning("autoscale.pool_failed", namespace=key[0], pool=key[1], error=str(exc))
        for gone in (set(self._stabilizers) | set(self._reported)) - seen:
            self._stabilizers.pop(gone, None)
            self._applied.pop(gone, None)
            self._reported.pop(gone, None)
            for gauge in metrics.POOL_GAUGES:
                try:
                    gauge.remove(*gone)
                except KeyError:
                    pass
            for state in ("ready", "unacknowledged"):
                try:
                    metrics.POOL_BROKER_MESSAGES.remove(*gone, state)
                except KeyError:
                    pass

    async def _scale(self, key: tuple[str, str], raw_spec: dict[str, Any], now: float) -> None:
        """Gather the pool's backlog, let :func:`decisions.scale` decide, write what changed."""
        namespace, pool = key
        spec = views.PoolSpec(raw_spec)
        queued, running = backlog(self._runs, namespace, pool)
        messages = self._depths.get(message.queue_name(namespace, pool))
        if messages is not None:
            metrics.POOL_BROKER_MESSAGES.labels(namespace, pool, "ready").set(messages[0])
            metrics.POOL_BROKER_MESSAGES.labels(namespace, pool, "unacknowledged").set(messages[1])
        found = list(self._deployments.get(key, []))
        decided = decisions.scale(
            spec, queued=queued, running=running, broker_messages=messages,
            stabilizer=self._stabilizers.setdefault(key, deployments.Stabilizer(spec.scale_down_stabilization_seconds)),
            now=now, applied=self._applied.get(key), deployment=found[0] if found else None,
        )
        if decided.patch and decided.target is not None and await self._set_replicas(namespace, pool, decided.target):
            logger.info("pool.scaled", namespace=namespace, pool=pool, replicas=decided.target,
                        desired=decided.desired, queued=queued, running=running)
            self._applied[key] = decided.target
        if found:
            metrics.POOL_REPLICAS.labels(namespace, pool).set(found[0][1])
            metrics.POOL_READY_REPLICAS.labels(namespace, pool).set(found[0][2])
            metrics.POOL_CAPACITY.labels(namespace, pool).set(found[0][2] * spec.processes * spec.threads)
        if decided.target is not None:
            metrics.POOL_DESIRED_REPLICAS.labels(namespace, pool).set(decided.target)
        if self._reported.get(key) != decided.report:
            await self._api.patch(kube.WorkerPool.Status, pool, {"status": decided.report}, namespace=namespace,
                                  patch_type=lightkube.types.PatchType.MERGE)
            self._reported[key] = decided.report

    async def _mark_costs(self, key: tuple[str, str]) -> None:
        """Set each pod's deletion cost to its runs in flight, where it differs."""
        if self._pods is None or self._run_pods is None:
            return
        namespace = key[0]
        for pod, current in list(self._pods.get(key, [])):
            wanted = str(len(self._run_pods.get((namespace, pod), [])))
            if current == wanted or (current is None and wanted == "0"):
                continue
            try:
                await self._api.patch(Pod, pod, {"metadata": {"annotations": {workerpools.DELETION_COST: wanted}}},
                                      namespace=namespace, patch_type=lightkube.types.PatchType.MERGE)
            except kube.ApiError as exc:
                if not kube.is_not_found(exc):  # a pod that just went away needs no cost
                    raise
            else:
                logger.debug("pod.deletion_cost", namespace=namespace, pod=pod, cost=wanted)

    async def _set_replicas(self, namespace: str, pool: str, replicas: int) -> bool:
        """Patch the Deployment's replicas; False while it does not exist yet."""
        try:
            await self._api.patch(workerpools.Deployment, deployments.deployment_name(pool),
                                  {"spec": {"replicas": replicas}}, namespace=namespace,
                                  patch_type=lightkube.types.PatchType.MERGE)
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                return False
            raise
        return True
