"""RabbitMQ going away and the management API, on a RabbitMQ node of the test's own.

The shared broker is never stopped: this module starts its own node (tests/rabbitnode.py,
with the management plugin), its own emulator and its own operator, so stopping the broker
disturbs nothing else. Workers, Redis and PostgreSQL are the real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from agentrun import kube, streams
from tests.e2e import harness
from tests.e2e.scenarios import OPERATOR_ENV, WORKER_ENV, agentrun, final_events, sample
from tests.rabbitnode import RabbitNode

pytestmark = pytest.mark.e2e

WORDS = 20
TEXT = " ".join(f"w{i}" for i in range(WORDS))
SCRIPT = [{"text": TEXT, "chunkDelayMs": 100}]  # ~2 s per run


@pytest.fixture(scope="module")
def outage_bed(tmp_path_factory: pytest.TempPathFactory, rabbit_node: RabbitNode, redis_url: str,
               postgres_dsn: str) -> Iterator[tuple[harness.Bed, harness.Proc]]:
    """An emulator, bed and operator of this module's own, on the private RabbitMQ node."""
    with harness.emulated_bed(tmp_path_factory.mktemp("outage"), amqp_url=rabbit_node.amqp_url,
                              redis_url=redis_url, database_url=postgres_dsn) as bed:
        operator = bed.start_operator(AGENTRUN_RABBITMQ_MANAGEMENT_URL=rabbit_node.management_url,
                                      AGENTRUN_BROKER_STATS_INTERVAL_SECONDS="1", **OPERATOR_ENV)
        yield bed, operator


@pytest.fixture
def space(outage_bed: tuple[harness.Bed, harness.Proc]) -> str:
    bed, _ = outage_bed
    name = f"outage-{uuid.uuid4().hex[:8]}"
    bed.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def replicas(bed: harness.Bed, namespace: str, name: str) -> int | None:
    found = bed.emulator.get("apps/v1", "deployments", namespace, name)
    return None if found is None else int(found["spec"].get("replicas", -1))


def test_the_autoscaler_counts_messages_the_broker_holds_that_it_has_no_run_for(
    outage_bed: tuple[harness.Bed, harness.Proc], rabbit_node: RabbitNode, space: str
) -> None:
    bed, operator = outage_bed
    # Given an idle pool of 0 to 5 replicas, one run per replica
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "burst", "namespace": space},
                "spec": {"minReplicas": 0, "maxReplicas": 5, "runsPerReplica": 1,
                         "scaleDownStabilizationSeconds": 0}})
    harness.wait_until(lambda: replicas(bed, space, "burst-workers") == 0, 20, "the idle pool at zero")
    # When three messages reach its queue that no AgentRun accounts for
    queue = f"agentrun.{space}.burst"
    producer = RabbitmqBroker(url=rabbit_node.amqp_url, confirm_delivery=True)
    try:
        producer.declare_queue(queue)
        for _ in range(3):
            producer.enqueue(dramatiq.Message(queue_name=queue, actor_name="run_agent", args=(), kwargs={},
                                              options={}))
    finally:
        producer.close()
    # Then the management API's count wakes the pool: three replicas, and the pool reports them
    harness.wait_until(lambda: replicas(bed, space, "burst-workers") == 3, 30, "three replicas for three messages")
    assert sample(operator, "agentrun_pool_broker_messages", namespace=space, pool="burst", state="ready") == 3
    assert sample(operator, "agentrun_pool_queued_runs", namespace=space, pool="burst") in (None, 0)
    status = bed.api.get(kube.WorkerPool, "burst", namespace=space).to_dict()["status"]
    assert status["brokerMessages"] == 3
    # And when the queue empties, the pool goes back to zero
    bed.delete_queues(queue)
    harness.wait_until(lambda: replicas(bed, space, "burst-workers") == 0, 30, "the pool back to zero")


def test_runs_survive_rabbitmq_stopping_and_each_runs_exactly_once(
    outage_bed: tuple[harness.Bed, harness.Proc], rabbit_node: RabbitNode, space: str
) -> None:
    bed, _ = outage_bed
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "default", "namespace": space}, "spec": {}})
    worker = bed.start_worker(f"agentrun.{space}.default", threads=2, **WORKER_ENV)
    try:
        # Given four runs: two executing on the worker's two threads, two waiting in the queue
        uids = {n: bed.create(agentrun(space, n, SCRIPT))["metadata"]["uid"] for n in ("a", "b", "c", "d")}
        harness.wait_until(
            lambda: sum(1 for n in uids if (bed.get_run(space, n).get("status") or {}).get("phase") == "Running") == 2,
            30, "two runs executing")
        # When RabbitMQ stops (its connections drop; durable queues and persistent messages stay)
        rabbit_node.stop_app()
        try:
            # And two more runs are created while it is down
            uids.update({n: bed.create(agentrun(space, n, SCRIPT))["metadata"]["uid"] for n in ("e", "f")})
            harness.wait_until(lambda: all((bed.get_run(space, n).get("status") or {}).get("phase") == "Queued"
                                           for n in ("e", "f")), 20, "the new runs queued (not yet published)")
        finally:
            # And it comes back
            rabbit_node.start_app()
        # Then every run succeeds
        for name in uids:
            status = bed.wait_phase(space, name, "Succeeded", "Failed", "Stopped", timeout=90)["status"]
            assert (status["phase"], status.get("result")) == ("Succeeded", TEXT), (name, status)
        # And each ran exactly once: one start, one attempt, one terminal event, the text once
        output = worker.output()
        skipped = output.count('"run.skipped"')
        print(f"redeliveries dropped by the worker: {skipped}")
        for name, uid in uids.items():
            assert len([line for line in output.splitlines() if '"run.started"' in line and uid in line]) == 1, name
            events = final_events(bed.redis_url, uid)
            started = [e for e in events if e["type"] == "status" and e["status"] == "running"]
            assert [e.get("attempt") for e in started] == [1], (name, started)
            assert sum(1 for e in events if streams.is_terminal(e)) == 1, name
            assert "".join(e["delta"] for e in events if e["type"] == streams.ASSISTANT) == TEXT, name
            row = bed.db_row(uid)
            assert row is not None and (row["status"], row["attempt"]) == ("Succeeded", 1), (name, row)
    finally:
        worker.stop()
        bed.delete_queues(f"agentrun.{space}.default")


