"""The worker's ``/metrics`` end to end: a real ``dramatiq agentrun_worker.actors --processes 2``
(its port from ``AGENTRUN_METRICS_PORT``, the path the chart's PodMonitor scrapes), real kopf,
RabbitMQ, Redis and PostgreSQL.

Two worker processes with one thread each take the runs, so the samples served are the sum of
both processes' multiprocess files.
"""

from __future__ import annotations

import httpx
import prometheus_client.parser
import pytest

from tests.e2e import harness
from tests.e2e.scenarios import agentrun

pytestmark = pytest.mark.e2e

SLOW = [{"text": " ".join(f"word{i}" for i in range(20)), "chunkDelayMs": 100}]  # ~2 s
QUICK = [{"text": "done"}]
ACTOR = "execute_run"


def samples(proc: harness.Proc) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert proc.metrics_url is not None
    response = httpx.get(proc.metrics_url, timeout=5)
    response.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in prometheus_client.parser.text_string_to_metric_families(response.text)
            for s in family.samples}


def value(proc: harness.Proc, name: str, **labels: str) -> float | None:
    return samples(proc).get((name, frozenset(labels.items())))


def serving(proc: harness.Proc) -> bool:
    try:
        return bool(samples(proc) is not None)
    except httpx.HTTPError:
        return False


def test_a_worker_serves_dramatiq_s_and_agentrun_s_series_summed_over_its_processes(
    bed: harness.Bed, operator: object, namespace: str
) -> None:
    # Given a worker of two processes, one thread each, serving its metrics
    queue = f"agentrun.{namespace}.default"
    worker = bed.start_worker(queue, processes=2, threads=1)
    assert worker.metrics_url is not None and worker.metrics_url.endswith("/metrics")
    harness.wait_until(lambda: serving(worker), 15, "the worker's /metrics to answer")
    message = {"queue_name": queue, "actor_name": ACTOR}

    # When a slow run executes
    bed.create(agentrun(namespace, "slow", SLOW))
    bed.wait_phase(namespace, "slow", "Running")
    # Then it is in flight, as a run and as a Dramatiq message
    harness.wait_until(lambda: value(worker, "agentrun_worker_runs_in_flight", queue_name=queue) == 1, 10,
                       "the run in flight")
    assert value(worker, "dramatiq_messages_inprogress", **message) == 1

    # When four quick runs come while it executes, and every run ends
    for i in range(4):
        bed.create(agentrun(namespace, f"quick-{i}", QUICK))
    names = ["slow", *(f"quick-{i}" for i in range(4))]
    statuses = [bed.wait_phase(namespace, name, "Succeeded", "Failed", timeout=30)["status"] for name in names]
    assert all(s["phase"] == "Succeeded" for s in statuses), statuses
    # (both processes ran some: instance ids are <host>-<pid>-<random>)
    assert len({s["workerInstance"].rsplit("-", 2)[1] for s in statuses}) == 2, statuses

    # Then the served samples count all five, whichever process ran them
    def settled() -> bool:
        return value(worker, "dramatiq_messages_total", **message) == 5
    harness.wait_until(settled, 10, "five messages counted")
    assert value(worker, "dramatiq_message_duration_milliseconds_count", **message) == 5
    assert value(worker, "dramatiq_messages_inprogress", **message) == 0
    assert value(worker, "dramatiq_message_errors_total", **message) in (None, 0)
    assert value(worker, "agentrun_worker_runs_started_total", queue_name=queue) == 5
    assert value(worker, "agentrun_worker_runs_finished_total", queue_name=queue, phase="Succeeded",
                 reason="Completed") == 5
    assert value(worker, "agentrun_worker_runs_in_flight", queue_name=queue) == 0
    slow_ms = [v for (name, labels), v in samples(worker).items()
               if name == "dramatiq_message_duration_milliseconds_bucket" and ("le", "1000.0") in labels]
    assert slow_ms == [4], slow_ms  # the slow run took more than a second, the quick ones less
