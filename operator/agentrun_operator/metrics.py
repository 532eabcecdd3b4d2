"""Prometheus metrics of the operator, served on ``/metrics`` (``AGENTRUN_METRICS_PORT``).

``startup`` starts the HTTP server; the gauges are computed at scrape time from the
``run_phases`` index (so they are exact and cost nothing between scrapes); the counters and
the histogram are fed by the AgentRun event handler (:func:`observe`), the recovery scan and
the handlers. Every metric is documented in ``docs/metrics.md``. The operator's own registry
keeps these apart from anything else in the process (``agentrun dev`` runs a worker in it too).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import prometheus_client
import prometheus_client.core
import prometheus_client.registry

from agentrun import phases, timestamps, views

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

DISPATCH_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
"""Seconds: a warm pool starts a run in tens of milliseconds, a pool woken from zero in tens
of seconds, a saturated one in minutes; the buckets cover all three."""

QUEUED_PHASES = phases.UNSTARTED
RUNNING_PHASES = phases.ACTIVE

RUNS_FINISHED = prometheus_client.Counter(
    "agentrun_runs_finished_total",
    "Runs this operator saw reach a terminal phase, by namespace, pool, phase and reason.",
    ["namespace", "pool", "phase", "reason"],
    registry=REGISTRY,
)
DISPATCH_LATENCY = prometheus_client.Histogram(
    "agentrun_dispatch_latency_seconds",
    "Time from an AgentRun's creation to the start of its first attempt (status.startedAt).",
    ["namespace", "pool"],
    buckets=DISPATCH_BUCKETS,
    registry=REGISTRY,
)
RECONCILE_ERRORS = prometheus_client.Counter(
    "agentrun_reconcile_errors_total",
    "Unexpected errors in the operator's handlers and recovery scan, by where they happened.",
    ["handler"],
    registry=REGISTRY,
)
RECOVERIES = prometheus_client.Counter(
    "agentrun_recoveries_total",
    "Runs the recovery scan acted on, by the reason and what it did.",
    ["reason", "action"],
    registry=REGISTRY,
)
POOL_DESIRED_REPLICAS = prometheus_client.Gauge(
    "agentrun_pool_desired_replicas",
    "Replicas the autoscaler wants for a pool in operator mode (after scale-down stabilization).",
    ["namespace", "pool"],
    registry=REGISTRY,
)
POOL_REPLICAS = prometheus_client.Gauge(
    "agentrun_pool_replicas",
    "Replicas of a pool's Deployment (status.replicas).",
    ["namespace", "pool"],
    registry=REGISTRY,
)
POOL_READY_REPLICAS = prometheus_client.Gauge(
    "agentrun_pool_ready_replicas",
    "Ready replicas of a pool's Deployment (status.readyReplicas).",
    ["namespace", "pool"],
    registry=REGISTRY,
)
POOL_CAPACITY = prometheus_client.Gauge(
    "agentrun_pool_capacity_runs",
    "Runs a pool can execute at once: ready replicas x processes x threads.",
    ["namespace", "pool"],
    registry=REGISTRY,
)
POOL_BROKER_MESSAGES = prometheus_client.Gauge(
    "agentrun_pool_broker_messages",
    "Messages in a pool's queue by state (ready, unacknowledged), from the RabbitMQ management API "
    "(only when AGENTRUN_RABBITMQ_MANAGEMENT_URL is set).",
    ["namespace", "pool", "state"],
    registry=REGISTRY,
)
POOL_GAUGES = (POOL_DESIRED_REPLICAS, POOL_REPLICAS, POOL_READY_REPLICAS, POOL_CAPACITY)

LEADER = prometheus_client.Gauge(
    "agentrun_operator_leader",
    "1 while this operator process acts on resources (after start-up, until clean-up), else 0. "
    "The chart runs one replica with the Recreate strategy, so at most one reports 1.",
    registry=REGISTRY,
)
RUNS_DELETED = prometheus_client.Counter(
    "agentrun_runs_deleted_total",
    "Finished AgentRuns the operator deleted because their ttlSecondsAfterFinished passed.",
    registry=REGISTRY,
)
SCANS = prometheus_client.Counter(
    "agentrun_scans_total",
    "Recovery scans completed.",
    registry=REGISTRY,
)


def phase_key(body: kopf.Body) -> tuple[str, str, str] | None:
    """``(namespace, pool, phase)`` of an AgentRun for the ``run_phases`` index."""
    run = views.AgentRun(body)
    phase, namespace = run.status.phase, body.metadata.namespace
    if not phase or namespace is None:
        return None
    return (namespace, run.spec.pool, phase)


class IndexCollector(prometheus_client.registry.Collector):
    """Gauges read from the ``run_phases`` index when Prometheus scrapes."""

    def __init__(self, index: kopf.Index[tuple[str, str, str], str]) -> None:
        self._index = index

    def collect(self) -> Iterator[prometheus_client.core.Metric]:
        by_phase = prometheus_client.core.GaugeMetricFamily(
            "agentrun_runs", "AgentRuns that exist now, by namespace, pool and phase.",
            labels=["namespace", "pool", "phase"])
        queued = prometheus_client.core.GaugeMetricFamily(
            "agentrun_pool_queued_runs", "Runs of a pool waiting for a worker (Pending or Queued).",
            labels=["namespace", "pool"])
        running = prometheus_client.core.GaugeMetricFamily(
            "agentrun_pool_running_runs", "Runs of a pool a worker is executing (Running or Stopping).",
            labels=["namespace", "pool"])
        backlog = prometheus_client.core.GaugeMetricFamily(
            "agentrun_pool_backlog_runs",
            "Queued plus running runs of a pool: the metric the hpa and keda autoscaling modes follow.",
            labels=["namespace", "pool"])
        pools: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for key, found in list(self._index.items()):
            namespace, pool, phase = key
            by_phase.add_metric([namespace, pool, phase], len(found))
            pools[(namespace, pool)][phase] += len(found)
        for (namespace, pool), counts in pools.items():
            queued.add_metric([namespace, pool], sum(counts[p] for p in QUEUED_PHASES))
            running.add_metric([namespace, pool], sum(counts[p] for p in RUNNING_PHASES))
            backlog.add_metric([namespace, pool], sum(counts[p] for p in QUEUED_PHASES | RUNNING_PHASES))
        yield by_phase
        yield queued
        yield running
        yield backlog


class Tracker:
    """What the event handler remembers per run to count each transition once."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def observe(self, event_type: str | None, body: kopf.Body) -> tuple[str, str] | None:
        """Count what changed; ``(phase before, phase now)`` when this process saw the run move."""
        meta, run = body.metadata, views.AgentRun(body)
        uid, namespace = meta.uid, meta.namespace
        if uid is None or namespace is None:
            return None
        if event_type == "DELETED":
            with self._lock:
                self._seen.pop(uid, None)
            return None
        phase = run.status.phase or ""
        attempt = run.status.attempt or 1
        with self._lock:
            before = self._seen.get(uid)
            self._seen[uid] = (phase, attempt)
        # Only transitions this process saw count: a run first seen after a restart is not
        # counted again. kopf may merge quick successive events, so compare with the last seen
        # state instead of expecting every phase.
        if before is None or before == (phase, attempt) or phases.is_terminal(before[0]):
            return None
        pool = run.spec.pool
        if phases.is_terminal(phase):
            RUNS_FINISHED.labels(namespace, pool, phase, run.status.reason or "").inc()
        started = phase != "" and phases.rank(phase) >= phases.rank(phases.Phase.RUNNING)
        if started and attempt == 1 and phases.rank(before[0] or None) < phases.rank(phases.Phase.RUNNING):
            latency = _seconds_between(run.created_at, run.status.started_at)
            if latency is not None:
                DISPATCH_LATENCY.labels(namespace, pool).observe(max(latency, 0.0))
        return (before[0], phase) if before[0] != phase else None


def _seconds_between(start: Any, end: Any) -> float | None:
    begun, ended = timestamps.parse(start), timestamps.parse(end)
    if begun is None or ended is None:
        return None
    return float((ended - begun).total_seconds())


TRACKER = Tracker()


class Endpoint:
    """The ``/metrics`` HTTP server and the index gauges it registered; :meth:`close` undoes both."""

    def __init__(self, port: int, index: kopf.Index[tuple[str, str, str], str]) -> None:
        self._collector = IndexCollector(index)
        REGISTRY.register(self._collector)
        try:
            self._server, self._thread = prometheus_client.start_http_server(port, registry=REGISTRY)
        except BaseException:
            REGISTRY.unregister(self._collector)
            raise

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        REGISTRY.unregister(self._collector)


def serve(port: int, index: kopf.Index[tuple[str, str, str], str]) -> Endpoint:
    """Register the index gauges and serve ``/metrics`` on ``port`` (all interfaces)."""
    return Endpoint(port, index)
