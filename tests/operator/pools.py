"""Operator settings, WorkerPool bodies and the worker container of a Deployment, for the pure-function tests."""

from __future__ import annotations

from typing import Any

from agentrun_operator import config

SETTINGS = config.OperatorSettings(worker_image="registry.example/worker:1.2", worker_service_account="agentrun-worker",
                                   connection_secret="conn")


def pool(**spec: Any) -> dict[str, Any]:
    defaults = {"processes": 2, "threads": 4, "minReplicas": 1, "maxReplicas": 10, "runsPerReplica": 8}
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "gpu", "namespace": "team-a", "uid": "u-1"}, "spec": {**defaults, **spec}}


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]
