"""RBAC proven by recorded calls: the chart grants exactly what the operator and workers use.

This test runs a scenario of its own (inputs from a ConfigMap and a Secret, a workflow, a TTL
deletion, a scaled pool) and checks that every call its session's operator and workers made so
far is allowed by the chart's rendered Roles. The other direction, nothing granted that no call
uses, needs every end-to-end scenario's calls: ``tests/e2e/rbac.py`` checks it on the union of
every session's record when the run ends (see there), whatever order the modules ran in.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import harness, rbac

pytestmark = pytest.mark.e2e


def test_the_chart_grants_exactly_what_the_operator_and_workers_call(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # A scenario of its own: runs whose input comes from a ConfigMap and a Secret.
    bed.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prompt", "namespace": namespace},
                "data": {"text": "hello from a ConfigMap"}})
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac", "namespace": namespace},
                "spec": {"inputFrom": {"configMapKeyRef": {"name": "prompt", "key": "text"}},
                         "agent": {"model": "scripted"}}})
    status = bed.wait_phase(namespace, "rbac", "Succeeded", "Failed")["status"]
    assert status["result"] == "You said: hello from a ConfigMap"
    bed.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prompt", "namespace": namespace},
                "stringData": {"text": "hello from a Secret"}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-secret", "namespace": namespace},
                "spec": {"inputFrom": {"secretKeyRef": {"name": "prompt", "key": "text"}},
                         "agent": {"model": "scripted"}}})
    status = bed.wait_phase(namespace, "rbac-secret", "Succeeded", "Failed")["status"]
    assert status.get("result") == "You said: hello from a Secret", (status.get("reason"), status.get("message"))
    # a run of an AgentWorkflow, which the operator resolves into the message
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentWorkflow",
                "metadata": {"name": "rbac", "namespace": namespace},
                "spec": {"agent": {"model": "scripted"}, "steps": [{"name": "one", "prompt": "{{input}} step"}]}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-workflow", "namespace": namespace},
                "spec": {"input": "hello from a workflow", "workflowRef": {"name": "rbac"}}})
    status = bed.wait_phase(namespace, "rbac-workflow", "Succeeded", "Failed")["status"]
    assert status.get("result") == "You said: hello from a workflow step", (status.get("reason"), status.get("message"))
    # a finished run deleted after its TTL, and a pool whose Deployment is created and scaled
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-ttl", "namespace": namespace},
                "spec": {"input": "bye", "agent": {"model": "scripted"}, "ttlSecondsAfterFinished": 0}})
    harness.wait_until(lambda: not any(o["metadata"]["name"] == "rbac-ttl" for o in bed.emulator.list(
        "agentrun.io/v1alpha1", "agentruns", namespace)), 30, "the finished run to be deleted after its TTL")
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "scaled", "namespace": namespace}, "spec": {"minReplicas": 0, "maxReplicas": 2}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-scaled", "namespace": namespace},
                "spec": {"input": "hi", "agent": {"model": "scripted"}, "workerPool": "scaled"}})

    def scaled_to_one() -> bool:
        return [d["spec"].get("replicas") for d in bed.emulator.list("apps/v1", "deployments", namespace)
                if d["metadata"]["name"] == "scaled-workers"] == [1]

    harness.wait_until(scaled_to_one, 30, "the pool's Deployment scaled to one replica")

    made = rbac.calls(bed.emulator)
    for component in rbac.CALLERS:
        assert any(call[0] == component for call in made), f"no calls recorded for the {component}"
    assert not rbac.denied(made), f"the chart denies calls the operator or workers make: {rbac.denied(made)}"
