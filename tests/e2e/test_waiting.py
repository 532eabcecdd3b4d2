"""While the operator waits for what a run names (an AgentWorkflow or a WorkerPool applied just
after it), the run says so: phase Pending, reason and condition naming what it waits for.

It used to show a blank phase for the whole wait. A bed of its own: the session's operator waits
only 1 s (AGENTRUN_POOL_WAIT_SECONDS), this one 30 s, so the wait can be seen and ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import harness

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def waiting_bed(tmp_path_factory: pytest.TempPathFactory, amqp_url: str, redis_url: str,
                postgres_dsn: str) -> Iterator[harness.Bed]:
    with harness.emulated_bed(tmp_path_factory.mktemp("waiting"), amqp_url=amqp_url, redis_url=redis_url,
                              database_url=postgres_dsn) as bed:
        bed.start_operator(AGENTRUN_POOL_WAIT_SECONDS="30")
        yield bed


def run(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"input": "hi", **spec}}


def waiting(bed: harness.Bed, namespace: str, name: str) -> dict[str, Any]:
    def pending() -> dict[str, Any] | None:
        status = bed.get_run(namespace, name).get("status") or {}
        return status if status.get("phase") == "Pending" and status.get("reason") else None

    return harness.wait_until(pending, 15, f"{name} to say what it waits for", 0.1)  # type: ignore[no-any-return]


def test_a_run_waiting_for_its_workflow_says_so_and_goes_on_once_it_exists(waiting_bed: harness.Bed) -> None:
    bed = waiting_bed
    namespace = bed.new_namespace()
    # Given a run whose AgentWorkflow does not exist yet
    bed.create(run(namespace, "early", workflowRef={"name": "later"}))
    # Then it is Pending, saying which workflow it waits for
    status = waiting(bed, namespace, "early")
    assert status["reason"] == "WaitingForWorkflow"
    assert 'AgentWorkflow "later"' in status["message"] and namespace in status["message"]
    dispatched = next(c for c in status["conditions"] if c["type"] == "Dispatched")
    assert (dispatched["status"], dispatched["reason"]) == ("False", "WaitingForWorkflow")
    # When the workflow is applied, the run is queued and the waiting note is gone
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentWorkflow",
                "metadata": {"name": "later", "namespace": namespace},
                "spec": {"agent": {"model": "scripted"}, "steps": [{"name": "one", "prompt": "{{input}}"}]}})
    status = bed.wait_phase(namespace, "early", "Queued", timeout=20)["status"]
    assert not status.get("reason") and not status.get("message")


def test_a_run_waiting_for_its_pool_says_so(waiting_bed: harness.Bed) -> None:
    bed = waiting_bed
    namespace = bed.new_namespace()
    bed.create(run(namespace, "poolless", agent={"model": "scripted"}, workerPool="soon"))
    status = waiting(bed, namespace, "poolless")
    assert status["reason"] == "WaitingForWorkerPool"
    assert 'WorkerPool "soon"' in status["message"]
