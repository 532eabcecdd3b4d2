"""The Deployment of a WorkerPool and its size: pure functions, no API calls.

Called by the WorkerPool handlers (:mod:`agentrun_operator.workerpools`, which create or patch
what :func:`deployment_for` returns) and by the autoscaler (:mod:`agentrun_operator.scaling`,
which applies :func:`desired_replicas` through a :class:`Stabilizer`). Tested without any API
in ``tests/operator/test_deployments.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from agentrun import message
from agentrun_operator import config

COMPONENT = "worker"
MANAGED_BY = "agentrun-operator"
POOL_LABEL = "agentrun.io/workerpool"


def deployment_name(pool_name: str) -> str:
    """``<pool>-workers``, cut to the 63 characters a label value allows."""
    return f"{pool_name}-workers"[:63].rstrip("-.")


def selector_labels(pool_name: str) -> dict[str, str]:
    return {"app.kubernetes.io/component": COMPONENT, POOL_LABEL: pool_name[:63]}


def labels(pool_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "agentrun-worker",
        "app.kubernetes.io/instance": pool_name[:63],
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(pool_name),
    }


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _database_env(settings: config.OperatorSettings) -> list[dict[str, Any]]:
    """The record of runs: Supabase's URL and service key when configured, else the database URL."""
    if settings.connection_supabase_url_key and settings.connection_supabase_key_key:
        return [
            _secret_env("SUPABASE_URL", settings.connection_secret, settings.connection_supabase_url_key),
            _secret_env("AGENTRUN_SUPABASE_KEY", settings.connection_secret, settings.connection_supabase_key_key),
        ]
    return [_secret_env("AGENTRUN_DATABASE_URL", settings.connection_secret, settings.connection_database_url_key)]


def deployment_for(
    pool: dict[str, Any], settings: config.OperatorSettings, *, replicas: int | None = None
) -> dict[str, Any]:
    """The apps/v1 Deployment of ``pool`` (a WorkerPool as a dict, spec defaulted by the CRD).

    ``replicas`` is left out when None (an HPA or KEDA owns it, or the caller must not touch
    it). The pool's own ``env`` comes after the operator's, so a pool may override a setting.
    """
    meta, spec = pool["metadata"], pool.get("spec") or {}
    name, namespace = meta["name"], meta["namespace"]
    env: list[dict[str, Any]] = [
        {"name": "AGENTRUN_QUEUE", "value": message.queue_name(namespace, name)},
        _secret_env("AGENTRUN_BROKER_URL", settings.connection_secret, settings.connection_broker_url_key),
        _secret_env("AGENTRUN_REDIS_URL", settings.connection_secret, settings.connection_redis_url_key),
        *_database_env(settings),
        {"name": "AGENTRUN_LOG_FORMAT", "value": "json"},
        # the pod's name starts each worker's instance id, so the operator knows which pod
        # runs what and can make busy pods the last a scale-in removes (pod-deletion-cost)
        {"name": "AGENTRUN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "AGENTRUN_METRICS_PORT", "value": str(settings.worker_metrics_port)},
        # runs in flight get the pod's grace period less 10 s to finish before they are
        # handed back; the rest is for the hand-back itself and the process exit
        {"name": "AGENTRUN_SHUTDOWN_GRACE_SECONDS",
         "value": str(max(1, settings.worker_termination_grace_seconds - 10))},
        # the pool's standard MCP servers (they name secrets by variable, never hold them)
        *([{"name": "AGENTRUN_MCP_SERVERS", "value": json.dumps(spec["mcpServers"], separators=(",", ":"))}]
          if spec.get("mcpServers") else []),
        *[dict(e) for e in spec.get("env") or []],
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.get("image") or settings.worker_image,
        "imagePullPolicy": spec.get("imagePullPolicy") or settings.worker_image_pull_policy,
        "command": ["dramatiq", "agentrun_worker.actors",
                    "--processes", str(int(spec.get("processes") or 1)),
                    "--threads", str(int(spec.get("threads") or 8)),
                    # Dramatiq waits this long (ms) for worker threads; the pod's grace bounds it
                    "--worker-shutdown-timeout", str(settings.worker_termination_grace_seconds * 1000)],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": settings.worker_metrics_port, "protocol": "TCP"}],
        "resources": dict(spec.get("resources") or {}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.get("envFrom"):
        container["envFrom"] = [dict(e) for e in spec["envFrom"]]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": settings.worker_termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if settings.worker_service_account:
        pod_spec["serviceAccountName"] = settings.worker_service_account
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": labels(name),
                         "annotations": {"kubectl.kubernetes.io/default-container": "worker"}},
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": namespace,
            "labels": labels(name),
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": deployment_spec,
    }


def owner_reference(pool: dict[str, Any]) -> dict[str, Any]:
    """The reference that makes an object the pool's: deleted with it, reconciled only by it."""
    meta = pool["metadata"]
    return {
        "apiVersion": pool.get("apiVersion", "agentrun.io/v1alpha1"),
        "kind": pool.get("kind", "WorkerPool"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_replicas(queued: int, running: int, *, runs_per_replica: int, min_replicas: int, max_replicas: int) -> int:
    """``clamp(ceil((queued + running) / runsPerReplica), minReplicas, maxReplicas)``.

    With ``minReplicas: 0`` an idle pool scales to zero, and the first queued run wakes it.
    """
    wanted = math.ceil((queued + running) / max(runs_per_replica, 1))
    return max(min_replicas, min(max_replicas, wanted))


@dataclasses.dataclass
class Stabilizer:
    """Scale up at once, scale down only to the highest recommendation of the last window.

    The same rule as the HorizontalPodAutoscaler's scale-down stabilization: a short lull in
    the backlog does not stop workers that will be needed again a minute later.
    """

    window_seconds: float
    history: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    def recommend(self, desired: int, now: float) -> int:
        self.history = [(t, r) for t, r in self.history if now - t < self.window_seconds]
        self.history.append((now, desired))
        return max(r for _, r in self.history)
