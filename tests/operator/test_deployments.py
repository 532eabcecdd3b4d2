"""The WorkerPool Deployment manifest and the autoscaling formula, as pure functions."""

from __future__ import annotations

import pytest
from agentrun_operator import deployments

from tests.operator.pools import SETTINGS, container, pool


def test_the_deployment_runs_dramatiq_on_the_pool_queue_with_connection_urls_from_the_secret() -> None:
    manifest = deployments.deployment_for(pool(), SETTINGS, replicas=3)
    assert (manifest["apiVersion"], manifest["kind"]) == ("apps/v1", "Deployment")
    assert manifest["metadata"]["name"] == "gpu-workers" and manifest["metadata"]["namespace"] == "team-a"
    assert manifest["spec"]["replicas"] == 3
    worker = container(manifest)
    assert worker["command"] == ["dramatiq", "agentrun_worker.actors", "--processes", "2", "--threads", "4",
                                 "--worker-shutdown-timeout", "120000"]
    assert worker["image"] == "registry.example/worker:1.2"
    env = {e["name"]: e for e in worker["env"]}
    assert env["AGENTRUN_QUEUE"]["value"] == "agentrun.team-a.gpu"
    # runs in flight may go on until 10 s before the pod's grace period ends, then are handed back
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert env["AGENTRUN_SHUTDOWN_GRACE_SECONDS"]["value"] == "110"
    for name, key in (("AGENTRUN_BROKER_URL", "broker-url"), ("AGENTRUN_REDIS_URL", "redis-url"),
                      ("AGENTRUN_DATABASE_URL", "database-url")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "conn", "key": key}}}
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] == "agentrun-worker"
    # the worker serves /metrics on the container port the PodMonitor scrapes by name
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9191, "protocol": "TCP"}]
    assert env["AGENTRUN_METRICS_PORT"]["value"] == "9191"


def test_the_pool_owns_the_deployment_and_the_selector_matches_the_pod_labels() -> None:
    manifest = deployments.deployment_for(pool(), SETTINGS)
    owner = manifest["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool", "name": "gpu", "uid": "u-1",
                     "controller": True, "blockOwnerDeletion": True}
    selector = manifest["spec"]["selector"]["matchLabels"]
    pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert "replicas" not in manifest["spec"]  # left to the autoscaler (or an HPA / KEDA)


def test_the_pod_is_hardened() -> None:
    manifest = deployments.deployment_for(pool(), SETTINGS)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] == SETTINGS.worker_termination_grace_seconds
    ctx = container(manifest)["securityContext"]
    assert ctx == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                   "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(manifest)["volumeMounts"]


def test_pool_env_env_from_resources_and_image_are_carried_and_pool_env_wins() -> None:
    secret_env = {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "key"}}}
    manifest = deployments.deployment_for(pool(
        image="mine:2", imagePullPolicy="Always", env=[secret_env, {"name": "AGENTRUN_LOG_FORMAT", "value": "console"}],
        envFrom=[{"secretRef": {"name": "model-keys"}}], resources={"limits": {"memory": "1Gi"}}), SETTINGS)
    worker = container(manifest)
    assert (worker["image"], worker["imagePullPolicy"]) == ("mine:2", "Always")
    assert secret_env in worker["env"]
    assert worker["envFrom"] == [{"secretRef": {"name": "model-keys"}}]
    assert worker["resources"] == {"limits": {"memory": "1Gi"}}
    log_formats = [e["value"] for e in worker["env"] if e["name"] == "AGENTRUN_LOG_FORMAT"]
    assert log_formats[-1] == "console"  # Kubernetes takes the last of duplicate names


@pytest.mark.parametrize(("queued", "running", "per", "low", "high", "expected"), [
    (0, 0, 8, 0, 10, 0),     # idle pool with minReplicas 0: scale to zero
    (1, 0, 8, 0, 10, 1),     # the first queued run wakes it
    (9, 0, 8, 1, 10, 2),     # ceil(9 / 8)
    (3, 5, 8, 1, 10, 1),     # queued and running both count
    (100, 20, 8, 1, 10, 10),  # capped by maxReplicas
    (0, 0, 8, 2, 10, 2),     # floored by minReplicas
])
def test_desired_replicas_follow_the_formula(queued: int, running: int, per: int, low: int, high: int,
                                             expected: int) -> None:
    assert deployments.desired_replicas(queued, running, runs_per_replica=per, min_replicas=low,
                                        max_replicas=high) == expected


def test_the_stabilizer_scales_up_at_once_and_down_only_after_the_window() -> None:
    stabilizer = deployments.Stabilizer(window_seconds=300)
    assert stabilizer.recommend(2, now=0) == 2
    assert stabilizer.recommend(5, now=10) == 5  # up: at once
    assert stabilizer.recommend(1, now=20) == 5  # down: held
    assert stabilizer.recommend(1, now=309) == 5  # the 5 of t=10 is still inside the window
    assert stabilizer.recommend(1, now=311) == 1  # window passed: down
    assert stabilizer.recommend(0, now=312) == 1
    assert deployments.Stabilizer(window_seconds=0).recommend(0, now=0) == 0


def test_a_long_pool_name_gives_a_valid_deployment_name() -> None:
    assert len(deployments.deployment_name("p" * 80)) <= 63


def test_with_supabase_keys_the_workers_get_its_url_and_service_key_instead_of_a_database_url() -> None:
    settings = SETTINGS.model_copy(update={"connection_supabase_url_key": "supabase-url",
                                           "connection_supabase_key_key": "supabase-service-role-key"})
    env = {e["name"]: e for e in container(deployments.deployment_for(pool(), settings))["env"]}
    assert "AGENTRUN_DATABASE_URL" not in env
    assert env["SUPABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "conn", "key": "supabase-url"}
    assert env["AGENTRUN_SUPABASE_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "conn",
                                                                        "key": "supabase-service-role-key"}
    assert "value" not in env["AGENTRUN_SUPABASE_KEY"]
