"""The HorizontalPodAutoscaler or KEDA ScaledObject of a WorkerPool in ``hpa``/``keda`` mode.

Pure builders (:func:`hpa_for`, :func:`scaled_object_for`) return the manifests; the
WorkerPool handler calls :func:`ensure` on every change of the pool, which creates or
patches the one the pool's mode asks for and deletes the other (and both in ``operator``
mode) when the pool owns it. Both scale the pool's Deployment on the metric the operator
exports, ``agentrun_pool_backlog_runs`` (queued + running runs of the pool), with one
replica per ``runsPerReplica`` runs: the same formula as the operator's own autoscaler, so
switching modes does not change the size a backlog asks for.

- ``hpa``: an ``autoscaling/v2`` HPA on the *external* metric ``agentrun_pool_backlog_runs``
  with the selector ``pool=<name>`` (served by prometheus-adapter; the rule is in
  ``docs/operator.md``), target ``AverageValue`` = ``runsPerReplica``. An HPA cannot scale to
  zero without the ``HPAScaleToZero`` feature gate, so ``minReplicas: 0`` becomes 1 there.
- ``keda``: a ``keda.sh/v1alpha1`` ScaledObject with a Prometheus trigger on the same sum,
  ``ignoreNullValues: "false"`` (an empty answer is an error, never a zero) and a fallback
  to ``autoscaling.fallbackReplicas`` (default ``maxReplicas``) after three failed queries,
  so a missing metric never scales a busy pool in.

Both carry the pool's ``scaleDownStabilizationSeconds`` as the scale-down stabilization
window and scale up without one.
"""

from __future__ import annotations

from typing import Any

import lightkube
import lightkube.generic_resource
import lightkube.resources.autoscaling_v2

from agentrun import kube, views
from agentrun_operator import config, deployments, owned

HorizontalPodAutoscaler = lightkube.resources.autoscaling_v2.HorizontalPodAutoscaler
ScaledObject = lightkube.generic_resource.create_namespaced_resource(
    "keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")

METRIC = "agentrun_pool_backlog_runs"
"""The operator's gauge both autoscalers follow: queued plus running runs of a pool."""

FALLBACK_FAILURES = 3
"""Failed Prometheus queries in a row before KEDA falls back to ``fallbackReplicas``."""


def mode(spec: dict[str, Any]) -> str:
    return views.PoolSpec(spec).autoscaling_mode


def _metadata(pool: dict[str, Any]) -> dict[str, Any]:
    meta = pool["metadata"]
    return {"name": deployments.deployment_name(meta["name"]), "namespace": meta["namespace"],
            "labels": deployments.labels(meta["name"]), "ownerReferences": [deployments.owner_reference(pool)]}


def _behavior(spec: views.PoolSpec) -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": int(spec.scale_down_stabilization_seconds)},
    }


def hpa_for(pool: dict[str, Any]) -> dict[str, Any]:
    """The ``autoscaling/v2`` HPA of a pool in ``hpa`` mode."""
    meta, spec = pool["metadata"], views.PoolSpec(pool.get("spec"))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(pool),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": deployments.deployment_name(meta["name"])},
            "minReplicas": max(1, spec.min_replicas),
            "maxReplicas": max(1, spec.max_replicas),
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": {"name": METRIC, "selector": {"matchLabels": {"pool": meta["name"][:63]}}},
                    "target": {"type": "AverageValue", "averageValue": str(spec.runs_per_replica)},
                },
            }],
            "behavior": _behavior(spec),
        },
    }


def backlog_query(namespace: str, pool: str) -> str:
    """PromQL for a pool's backlog: empty (not 0) when the operator's series is missing."""
    return f'sum({METRIC}{{namespace="{namespace}",pool="{pool}"}})'


def scaled_object_for(pool: dict[str, Any], settings: config.OperatorSettings) -> dict[str, Any]:
    """The ``keda.sh/v1alpha1`` ScaledObject of a pool in ``keda`` mode."""
    meta, spec = pool["metadata"], views.PoolSpec(pool.get("spec"))
    autoscaling, max_replicas = spec.autoscaling, spec.max_replicas
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(pool),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": deployments.deployment_name(meta["name"])},
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": max_replicas,
            "pollingInterval": settings.keda_polling_interval_seconds,
            "cooldownPeriod": int(spec.scale_down_stabilization_seconds),
            "fallback": {"failureThreshold": FALLBACK_FAILURES,
                         "replicas": int(autoscaling.get("fallbackReplicas", max_replicas))},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": autoscaling.get("prometheusAddress") or settings.prometheus_url,
                    "query": backlog_query(meta["namespace"], meta["name"]),
                    "threshold": str(spec.runs_per_replica),
                    "ignoreNullValues": "false",
                },
            }],
        },
    }


class AutoscalerUnavailable(Exception):
    """The cluster does not serve the API the pool's mode needs (KEDA not installed)."""


async def ensure(
    api: lightkube.AsyncClient, pool: dict[str, Any], settings: config.OperatorSettings
) -> tuple[str, str]:
    """Bring the pool's HPA / ScaledObject in line with its mode; ``(reason, message)``."""
    meta, spec = pool["metadata"], pool.get("spec") or {}
    wanted = mode(spec)
    name = deployments.deployment_name(meta["name"])
    manifests: dict[str, tuple[Any, dict[str, Any] | None]] = {
        "hpa": (HorizontalPodAutoscaler, hpa_for(pool) if wanted == "hpa" else None),
        "keda": (ScaledObject, scaled_object_for(pool, settings) if wanted == "keda" else None),
    }
    result = ("OperatorScaling", "the operator scales the Deployment itself")
    for kind, (resource, manifest) in manifests.items():
        if manifest is None:
            await owned.delete(api, resource, name, meta["namespace"], meta["uid"], what="autoscaler")
            continue
        try:
            result = await owned.apply(api, resource, manifest, meta["uid"], what="autoscaler")
        except kube.ApiError as exc:
            if kind == "keda" and kube.is_not_found(exc):
                raise AutoscalerUnavailable(
                    "autoscaling.mode is keda but the cluster does not serve keda.sh/v1alpha1 ScaledObjects: "
                    "install KEDA, or use autoscaling.mode operator or hpa") from None
            raise
    return result
