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

import functools
import json
import pathlib
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from agentrun import schema
from tests.chart.rendering import CHART, CI_IDS, CI_VALUES, render, render_ci

KUBERNETES_VERSIONS = ("1.28", "1.33")
SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"
MONITORING = {"ServiceMonitor": "servicemonitor.json", "PodMonitor": "podmonitor.json",
              "PrometheusRule": "prometheusrule.json"}
OUR_GROUP = "agentrun.io/"

EVERYTHING_ON = ("--values", str(CHART / "ci" / "monitoring-values.yaml"),
                 "--values", str(CHART / "ci" / "gateway-values.yaml"),
                 "--set", "operator.podDisruptionBudget.minAvailable=1")


@functools.cache
def monitoring_validator(kind: str) -> jsonschema.Draft7Validator:
    document = json.loads((SCHEMAS / MONITORING[kind]).read_text())
    jsonschema.Draft7Validator.check_schema(document)
    return jsonschema.Draft7Validator(document)


def problems(obj: dict[str, Any]) -> list[str]:
    """What is wrong with one rendered object ([] when nothing), by whichever schema owns its kind."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if obj["apiVersion"].startswith(OUR_GROUP):
        return [str(e) for e in schema.validate(schema.crd_for(kind), obj)]
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        assert kind in MONITORING, f"no schema for {obj['apiVersion']} {kind}"
        errors = monitoring_validator(kind).iter_errors(obj)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(map(str, error.absolute_path))
            found.append(f"{kind} {name} (Kubernetes {version}): {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{kind} {name}: no Kubernetes {version} schema for {obj['apiVersion']}")
    return found


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
