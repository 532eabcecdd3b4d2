"""The hpa and keda autoscaling modes, and pod-deletion-cost, end to end on the emulator.

The operator creates a WorkerPool's HorizontalPodAutoscaler or KEDA ScaledObject, keeps it in
line with the pool and deletes the one a pool leaves behind when its mode changes. KEDA is
not part of the emulator, as it is not part of a bare cluster: a test installs a small
ScaledObject CRD the way ``helm install keda`` would, after checking what a pool in keda
mode says without it. No autoscaler controller runs here (there is no kube-controller-manager
or KEDA operator); what is checked is what the operator writes, which is what they act on.
"""

from __future__ import annotations

from typing import Any

import lightkube.resources.core_v1
import lightkube.types
import pytest

from agentrun import kube
from tests.e2e import harness
from tests.e2e.scenarios import SLOW, WORKER_ENV, agentrun, streaming

pytestmark = pytest.mark.e2e

KEDA_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "scope": "Namespaced",
        "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject",
                  "listKind": "ScaledObjectList", "shortNames": ["so"]},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}


def pool(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def found(bed: harness.Bed, group_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    return bed.emulator.get(group_version, plural, namespace, name)  # type: ignore[no-any-return]


def condition(bed: harness.Bed, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    status = bed.api.get(kube.WorkerPool, name, namespace=namespace).to_dict().get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def set_spec(bed: harness.Bed, namespace: str, name: str, spec: dict[str, Any]) -> None:
    bed.api.patch(kube.WorkerPool, name, {"spec": spec}, namespace=namespace,
                  patch_type=lightkube.types.PatchType.MERGE)


def test_a_pool_follows_its_mode_hpa_then_keda_then_operator(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given a pool in hpa mode, 0 to 6 replicas, 3 runs per replica, a 120 s scale-down window
    bed.create(pool(namespace, "auto", minReplicas=0, maxReplicas=6, runsPerReplica=3,
                    scaleDownStabilizationSeconds=120, autoscaling={"mode": "hpa"}))
    # Then it gets an HPA on the backlog metric, owned by the pool, aimed at its Deployment
    hpa = harness.wait_until(lambda: found(bed, "autoscaling/v2", "horizontalpodautoscalers", namespace,
                                           "auto-workers"), 20, "the pool's HPA")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auto-workers"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 6)  # an HPA cannot scale to zero
    [metric] = spec["metrics"]
    assert metric["external"]["metric"] == {"name": "agentrun_pool_backlog_runs",
                                            "selector": {"matchLabels": {"pool": "auto"}}}
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "3"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "WorkerPool"
    # And the Deployment's replicas are left to the HPA (the operator never sets them)
    deployment = harness.wait_until(lambda: found(bed, "apps/v1", "deployments", namespace, "auto-workers"), 20,
                                    "the pool's Deployment")
    assert "replicas" not in deployment["spec"] or deployment["spec"]["replicas"] == 1
    # When the pool changes, the HPA follows
    set_spec(bed, namespace, "auto", {"runsPerReplica": 5})
    harness.wait_until(
        lambda: (found(bed, "autoscaling/v2", "horizontalpodautoscalers", namespace, "auto-workers") or {})
        .get("spec", {}).get("metrics", [{}])[0].get("external", {}).get("target", {}).get("averageValue") == "5",
        20, "the HPA to follow runsPerReplica")
    # When the pool moves to keda mode on a cluster without KEDA, it says so and keeps its HPA-free state
    set_spec(bed, namespace, "auto", {"autoscaling": {"mode": "keda"}})
    unavailable = harness.wait_until(
        lambda: (c := condition(bed, namespace, "auto", "AutoscalerReconciled")) and c["status"] == "False" and c,
        20, "the pool to say KEDA is missing")
    assert unavailable["reason"] == "AutoscalerUnavailable"
    assert "install KEDA" in unavailable["message"]
    assert found(bed, "autoscaling/v2", "horizontalpodautoscalers", namespace, "auto-workers") is None
    # When KEDA is installed and the pool is touched again, it gets its ScaledObject
    if bed.emulator.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, "scaledobjects.keda.sh") is None:
        bed.emulator.create(KEDA_CRD)
    set_spec(bed, namespace, "auto", {"autoscaling": {"mode": "keda", "fallbackReplicas": 4}})
    scaled = harness.wait_until(lambda: found(bed, "keda.sh/v1alpha1", "scaledobjects", namespace, "auto-workers"),
                                20, "the pool's ScaledObject")
    so = scaled["spec"]
    assert so["scaleTargetRef"]["name"] == "auto-workers"
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (0, 6)
    assert so["fallback"] == {"failureThreshold": 3, "replicas": 4}
    [trigger] = so["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == f'sum(agentrun_pool_backlog_runs{{namespace="{namespace}",pool="auto"}})'
    assert trigger["metadata"]["threshold"] == "5"
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert trigger["metadata"]["serverAddress"].startswith("http")
    assert harness.wait_until(lambda: (c := condition(bed, namespace, "auto", "AutoscalerReconciled"))
                              and c["status"] == "True" and c, 20, "the condition to clear")["reason"] == \
        "ScaledObjectCreated"
    # When the pool changes, the ScaledObject follows
    set_spec(bed, namespace, "auto", {"runsPerReplica": 2})
    harness.wait_until(
        lambda: (found(bed, "keda.sh/v1alpha1", "scaledobjects", namespace, "auto-workers") or {})
        .get("spec", {}).get("triggers", [{}])[0].get("metadata", {}).get("threshold") == "2",
        20, "the ScaledObject to follow runsPerReplica")
    # When it goes back to operator mode, the ScaledObject is deleted and the operator scales
    set_spec(bed, namespace, "auto", {"autoscaling": {"mode": "operator"}})
    harness.wait_until(lambda: found(bed, "keda.sh/v1alpha1", "scaledobjects", namespace, "auto-workers") is None,
                       20, "the ScaledObject to be deleted")
    harness.wait_until(lambda: (found(bed, "apps/v1", "deployments", namespace, "auto-workers") or {})
                       .get("spec", {}).get("replicas") == 0, 20, "the operator to scale the idle pool to zero")


def test_a_busy_worker_pod_costs_more_to_delete_than_idle_ones(bed: harness.Bed, operator: Any, namespace: str) -> None:
    # Given three worker pods of the default pool (as its ReplicaSet would create them)
    names = ["default-workers-busy", "default-workers-idle-a", "default-workers-idle-b"]
    for name in names:
        bed.emulator.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "agentrun-operator",
                                    "app.kubernetes.io/component": "worker", "agentrun.io/workerpool": "default"}},
            "spec": {"containers": [{"name": "worker", "image": "agentrun-worker"}]},
        })
    # When the worker process of the first pod runs a run
    bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_POD_NAME=names[0], **WORKER_ENV)
    uid = bed.create(agentrun(namespace, "busy", SLOW))["metadata"]["uid"]
    harness.wait_until(lambda: streaming(bed, uid), 20, "the run to stream")

    def costs() -> list[str | None]:
        pods = [bed.api.get(lightkube.resources.core_v1.Pod, n, namespace=namespace) for n in names]
        return [(p.metadata.annotations or {}).get("controller.kubernetes.io/pod-deletion-cost")
                if p.metadata else None for p in pods]

    # Then its pod's deletion cost counts the run and the idle pods stay cheapest
    harness.wait_until(lambda: costs()[0] == "1", 20, "the busy pod's deletion cost")
    assert costs()[1:] == [None, None]
    # And when the run ends, the cost goes back to zero
    bed.wait_phase(namespace, "busy", "Succeeded", "Failed")
    harness.wait_until(lambda: costs()[0] == "0", 20, "the pod's cost back to zero")
