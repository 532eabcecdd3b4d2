"""Validation of one rendered object by whichever schema owns its kind (see test_validation.py)."""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import jsonschema
import kubernetes_validate

from agentrun import schema

KUBERNETES_VERSIONS = ("1.28", "1.33")
SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"
MONITORING = {"ServiceMonitor": "servicemonitor.json", "PodMonitor": "podmonitor.json",
              "PrometheusRule": "prometheusrule.json"}
OUR_GROUP = "agentrun.io/"


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
