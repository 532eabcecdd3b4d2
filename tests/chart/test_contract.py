"""The chart and the operator agree: what the chart tells the operator is what ends up on the
workers' pods, and the chart's PodMonitor selects those pods.

The operator's settings are loaded from the environment the chart renders for it, and the
default WorkerPool's Deployment is built with the operator's own pure function
(``agentrun_operator.deployments.deployment_for``), so a renamed variable, label or port on
either side fails here instead of on a cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
from agentrun_operator import config, deployments

from agentrun import schema
from tests.chart.rendering import CHART, only, render

SCENARIOS = {
    "defaults": (),
    "namespaced": ("--values", str(CHART / "ci" / "namespaced-values.yaml")),
}


def operator_settings(operator: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> config.OperatorSettings:
    [container] = operator["spec"]["template"]["spec"]["containers"]
    for var in container["env"]:
        if "value" in var and var["name"].startswith("AGENTRUN_"):
            monkeypatch.setenv(var["name"], var["value"])
    return config.load()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_operator_builds_worker_pods_the_chart_expects(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(*SCENARIOS[scenario], "--set", "monitoring.podMonitor.enabled=true")
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    settings = operator_settings(operator, monkeypatch)
    pool = only(docs, "WorkerPool")
    # The chart's default pool names no image: it runs the worker image the chart gives the
    # operator, which upgrades change (tests/chart/test_upgrade.py).
    assert "image" not in pool["spec"] and "imagePullPolicy" not in pool["spec"]
    [operator_container] = operator["spec"]["template"]["spec"]["containers"]
    chart_image = next(e["value"] for e in operator_container["env"] if e["name"] == "AGENTRUN_WORKER_IMAGE")
    # As the API server would hand it over: a uid, the CRD's defaults.
    pool["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"
    pool = schema.apply_defaults(schema.crd_for("WorkerPool"), pool)
    deployment = deployments.deployment_for(pool, settings, replicas=1)
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]

    # A pool without spec.image gets the chart's worker image.
    assert container["image"] == settings.worker_image == chart_image
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert pod["spec"]["serviceAccountName"] in accounts
    assert pod["spec"]["serviceAccountName"].endswith("-worker")
    connection = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
                  and e["name"] in ("AGENTRUN_BROKER_URL", "AGENTRUN_REDIS_URL", "AGENTRUN_DATABASE_URL")}
    [operator_container] = operator["spec"]["template"]["spec"]["containers"]
    operator_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in operator_container["env"] if "valueFrom" in e}
    for name, ref in connection.items():  # the workers read the same Secret and keys as the operator
        assert (ref["name"], ref["key"]) == (operator_env[name]["name"], operator_env[name]["key"]), name

    monitor = only(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}

