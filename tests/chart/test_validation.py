"""Every object the chart renders, in every ci/ scenario, validated offline against its schema.

- Kubernetes kinds: the official OpenAPI schemas of the Kubernetes release, as JSON Schema,
  with ``kubernetes-validate`` in strict mode (unknown fields refused), for the oldest
  Kubernetes the chart supports (Chart.yaml's kubeVersion, 1.28) and for kubectl's (1.33).
- Our custom resources (the default WorkerPool): against our CRDs with ``agentrun.schema``, as
  the API server would (schema and CEL rules).
- monitoring.coreos.com kinds (ServiceMonitor, PodMonitor, PrometheusRule), which
  kubernetes-validate does not know: against the minimal hand-written JSON schemas in
  ``schemas/`` (required fields, types, no unknown fields on what the chart writes).

A rendered kind none of these knows fails the test: nothing goes unvalidated.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.chart.rendering import CHART, CI_IDS, CI_VALUES, render, render_ci
from tests.chart.validating import problems

EVERYTHING_ON = ("--values", str(CHART / "ci" / "monitoring-values.yaml"),
                 "--values", str(CHART / "ci" / "gateway-values.yaml"),
                 "--set", "operator.podDisruptionBudget.minAvailable=1")


SCENARIOS = [None, *CI_VALUES]
SCENARIO_IDS = ["defaults", *CI_IDS]


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_every_rendered_object_is_valid(values: pathlib.Path | None) -> None:
    docs = render_ci(values)
    found = [p for doc in docs for p in problems(doc)]
    assert found == []


@pytest.mark.parametrize("extra", [(), ("--set", "watchNamespaces={team-a,team-b}")], ids=["cluster", "namespaced"])
def test_every_optional_object_is_valid(extra: tuple[str, ...]) -> None:
    docs = render(*EVERYTHING_ON, *extra)
    kinds = {d["kind"] for d in docs}
    assert {"NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor", "PodMonitor", "PrometheusRule",
            "ConfigMap", "WorkerPool", "CustomResourceDefinition"} <= kinds
    found = [p for doc in docs for p in problems(doc)]
    assert found == []


def test_the_validators_do_refuse_bad_objects() -> None:
    """The checks above would catch a mistake: a misspelt field, a wrong type, a bad CR."""
    docs = render(*EVERYTHING_ON)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    assert any("readOnlyRootFS" in p for p in problems(deployment))
    service = next(d for d in docs if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eight thousand"
    assert problems(service)
    pool = next(d for d in docs if d["kind"] == "WorkerPool")
    pool["spec"]["threads"] = 0
    assert problems(pool)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in p for p in problems(monitor))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert problems(rule)
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    assert problems(unknown)
