"""Fixtures for the Kubernetes API emulator tests: a running server, HTTP clients, test CRDs.

Every test gets its own :class:`agentrun_local.emulator.EmulatorServer` on a free port (it starts in
a few milliseconds), with ``Widget`` (namespaced, status and scale subresources, printer
columns) and ``Gadget`` (cluster-scoped, no subresources) installed as CRDs.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from agentrun_local import emulator

ROOT = pathlib.Path(__file__).resolve().parents[2]

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
GADGETS = "/apis/example.com/v1/gadgets"


def widget_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "shortNames": ["wd"], "categories": ["gizmos"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                          "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {
                            "size": {"type": "integer", "minimum": 1, "default": 1},
                            "color": {"type": "string"},
                            "replicas": {"type": "integer"},
                        }},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def gadget_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def server() -> Iterator[emulator.EmulatorServer]:
    """A running emulator; at the end, no request may have failed inside it (HTTP 500)."""
    with emulator.EmulatorServer(crds=[widget_crd(), gadget_crd()]) as running:
        yield running
        assert running.call(lambda: list(running.emulator.errors)) == []


@pytest.fixture
def api(server: emulator.EmulatorServer) -> Iterator[httpx.Client]:
    """A plain JSON client of the emulator (errors are asserted, not raised)."""
    with httpx.Client(base_url=server.url, timeout=10, headers={"User-Agent": "emulator-tests/1.0"}) as client:
        yield client


def merge_patch(api: httpx.Client, path: str, body: Any) -> httpx.Response:
    return api.patch(path, content=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"})


def json_patch(api: httpx.Client, path: str, body: Any) -> httpx.Response:
    return api.patch(path, content=json.dumps(body), headers={"Content-Type": "application/json-patch+json"})


def watch(api: httpx.Client, path: str, params: dict[str, str], count: int,
          during: Callable[[], object] | None = None, timeout: float = 5) -> list[dict[str, Any]]:
    """Open a watch, run ``during`` once it is established, return the first ``count`` events.

    ``timeoutSeconds`` bounds the stream on the server side, so a missing event ends the test
    with a short list instead of hanging.
    """
    events: list[dict[str, Any]] = []
    query = {"watch": "true", "timeoutSeconds": str(int(timeout)), **params}
    with api.stream("GET", path, params=query) as response:
        assert response.status_code == 200, response.read()
        if during is not None:
            during()
        for line in response.iter_lines():
            if line.strip():
                events.append(json.loads(line))
            if len(events) >= count:
                break
    return events

