"""WorkerPool handlers: indexes of pools and their Deployments, and the pool's Deployment.

The ``pool_queues`` index lets the AgentRun dispatcher find a run's queue without an API call;
``pool_specs`` and ``pool_deployments`` feed the autoscaler (:mod:`agentrun_operator.scaling`).
On create, resume and update the pool's Deployment (built by
:func:`agentrun_operator.deployments.deployment_for`) is created if absent, or patched if the
pool owns it; a Deployment of the same name the pool does not own is left alone and reported.
In ``hpa`` and ``keda`` mode the pool also gets its HorizontalPodAutoscaler or ScaledObject
(:mod:`agentrun_operator.autoscalers`). No deletion handler (so no finalizer): ownerReferences
let Kubernetes' garbage collector remove the Deployment and the autoscaler with the pool.
"""

from __future__ import annotations

from typing import Any

import kopf
import lightkube
import lightkube.resources.apps_v1

from agentrun import kube, message, views
from agentrun_operator import autoscalers, config, deployments, memos, metrics, owned

RESOURCE = ("agentrun.io", "v1alpha1", "workerpools")
Deployment = lightkube.resources.apps_v1.Deployment


@kopf.index(*RESOURCE)
def pool_queues(*, namespace: str | None, name: str, **_: Any) -> dict[tuple[str, str], str]:
    assert namespace is not None  # WorkerPools are namespaced
    return {(namespace, name): message.queue_name(namespace, name)}


@kopf.index(*RESOURCE)
def pool_specs(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Each pool's spec (as the CRD defaulted it), for the autoscaler."""
    assert namespace is not None
    return {(namespace, name): dict(spec)}


@kopf.index("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": deployments.MANAGED_BY})
def pool_deployments(*, namespace: str | None, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status,
                     **_: Any) -> dict[tuple[str, str], tuple[int, int, int]]:
    """``(spec.replicas, status.replicas, status.readyReplicas)`` of each pool's Deployment."""
    pool = labels.get(deployments.POOL_LABEL)
    if namespace is None or pool is None:
        return {}  # {} (not None) drops what the object indexed before
    return {(namespace, pool): (int(spec.get("replicas") or 0), int(status.get("replicas") or 0),
                                int(status.get("readyReplicas") or 0))}


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


@kopf.index("", "v1", "pods", labels={"app.kubernetes.io/managed-by": deployments.MANAGED_BY})
def pool_pods(*, namespace: str | None, name: str, labels: kopf.Labels, annotations: kopf.Annotations,
              **_: Any) -> dict[tuple[str, str], tuple[str, str | None]]:
    """``(pod name, its pod-deletion-cost annotation)`` of each worker pod, by pool."""
    pool = labels.get(deployments.POOL_LABEL)
    if namespace is None or pool is None:
        return {}  # {} (not None) drops what the object indexed before
    return {(namespace, pool): (name, annotations.get(DELETION_COST))}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def reconcile_pool(
    *, body: kopf.Body, namespace: str | None, name: str, meta: kopf.Meta, patch: kopf.Patch, memo: Any, **_: Any
) -> None:
    assert namespace is not None
    state = memos.of(memo)
    patch.status["queue"] = message.queue_name(namespace, name)
    patch.status["observedGeneration"] = meta.get("generation")
    try:
        reason, text = await ensure_deployment(state.api, dict(body), state.operator_config)
    except Exception:
        metrics.RECONCILE_ERRORS.labels("workerpool").inc()
        raise
    status = "False" if reason == "DeploymentConflict" else "True"
    patch.status["conditions"] = kube.set_condition(
        list(body.status.get("conditions") or []), "DeploymentReconciled", status, reason=reason, message=text,
        generation=meta.get("generation"),
    )
    if status == "False":
        kopf.warn(body, reason=reason, message=text)
    else:
        kopf.info(body, reason=reason, message=text)
    try:
        reason, text = await autoscalers.ensure(state.api, dict(body), state.operator_config)
        status = "False" if reason.endswith("Conflict") else "True"
    except autoscalers.AutoscalerUnavailable as exc:
        reason, text, status = "AutoscalerUnavailable", str(exc), "False"
    except Exception:
        metrics.RECONCILE_ERRORS.labels("workerpool").inc()
        raise
    patch.status["conditions"] = kube.set_condition(
        patch.status["conditions"], "AutoscalerReconciled", status, reason=reason, message=text,
        generation=meta.get("generation"),
    )
    if status == "False":
        kopf.warn(body, reason=reason, message=text)


async def ensure_deployment(
    api: lightkube.AsyncClient, pool: dict[str, Any], settings: config.OperatorSettings
) -> tuple[str, str]:
    """Create the pool's Deployment if absent, else patch it if the pool owns it; (reason, message)."""
    meta, spec = pool["metadata"], views.PoolSpec(pool.get("spec"))
    initial = spec.min_replicas if spec.autoscaling_mode == "operator" else None
    manifest = deployments.deployment_for(pool, settings, replicas=initial)
    # The replica count belongs to the autoscaler (or the HPA / KEDA): never reset it here.
    spec_patch = {k: v for k, v in manifest["spec"].items() if k not in ("replicas", "selector")}
    return await owned.apply(api, Deployment, manifest, meta["uid"], what="deployment", spec=spec_patch,
                             replicas=initial)
