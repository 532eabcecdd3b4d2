"""The kind quickstart (docs/quickstart-kind.md), checked as far as it can be without a cluster.

The manifests of examples/cluster/ are validated against the official Kubernetes schemas
(kubernetes-validate, strict); the Secret is the one the chart reads; the Services are the hosts
of the URLs in it; the chart renders and validates with the kind values; the ports of
kind-config.yaml are the node ports those values and the doc use; the doc runs the steps in order.
"""

from __future__ import annotations

import pathlib
import re
import urllib.parse
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.chart.rendering import CHART, ROOT, helm, only, render
from tests.chart.validating import KUBERNETES_VERSIONS, problems

EXAMPLES = ROOT / "examples" / "cluster"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
KIND_VALUES = EXAMPLES / "helm" / "kind-values.yaml"
DOC = ROOT / "docs" / "quickstart-kind.md"


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_each_manifest_is_valid_and_marked_not_for_production(path: pathlib.Path) -> None:
    assert "NOT FOR PRODUCTION" in path.read_text() or "FOR TRYING AGENTRUN ONLY" in path.read_text()
    for obj in yaml.safe_load_all(path.read_text()):
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "agentrun"


def test_the_secret_is_the_one_the_chart_reads() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["connection"]
    secret = only(objects(), "Secret")
    assert secret["metadata"]["name"] == values["existingSecret"]
    data = secret["stringData"]
    services = {(s["metadata"]["name"], s["metadata"]["namespace"]): {p["port"] for p in s["spec"]["ports"]}
                for s in objects() if s["kind"] == "Service"}
    for key, scheme in ((values["brokerUrlKey"], "amqp"), (values["redisUrlKey"], "redis"),
                        (values["databaseUrlKey"], "postgresql")):
        url = urllib.parse.urlsplit(data[key])
        assert url.scheme == scheme
        name, namespace, *_ = (url.hostname or "").split(".")
        assert url.port in services[(name, namespace)], f"{key}: no Service {name}.{namespace}:{url.port}"
    # The passwords in the URLs are the ones the services start with.
    assert urllib.parse.urlsplit(data["broker-url"]).password == data["rabbitmq-password"]
    assert urllib.parse.urlsplit(data["database-url"]).password == data["postgres-password"]


def test_services_select_their_pods() -> None:
    deployments = {d["metadata"]["name"]: d for d in objects() if d["kind"] == "Deployment"}
    assert set(deployments) == {"rabbitmq", "redis", "postgres"}
    for service in (s for s in objects() if s["kind"] == "Service"):
        pod = deployments[service["metadata"]["name"]]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_chart_renders_and_validates_with_the_kind_values() -> None:
    helm("lint", "--strict", str(CHART), "--values", str(KIND_VALUES))
    docs = render("--values", str(KIND_VALUES), release="agentrun", namespace="agentrun")
    assert [p for doc in docs for p in problems(doc)] == []
    operator = only(docs, "Deployment", "agentrun-operator")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("agentrun-operator:dev", "Never")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTRUN_WORKER_IMAGE"] == "agentrun-worker:dev"
    job = only(objects(), "Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["image"] == env["AGENTRUN_WORKER_IMAGE"] and job["imagePullPolicy"] == "Never"
    kind = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    node_ports = {m["containerPort"] for node in kind["nodes"] for m in node.get("extraPortMappings", [])}
    assert only(docs, "Service", "agentrun-operator")["spec"]["ports"][0]["nodePort"] in node_ports
    gateway = render("--values", str(KIND_VALUES),
                     "--set", "gateway.enabled=true,gateway.auth.existingSecret=agentrun-gateway-jwt",
                     "--set", "gateway.service.type=NodePort,gateway.service.nodePort=30080",
                     release="agentrun", namespace="agentrun")
    assert only(gateway, "Service", "agentrun-gateway")["spec"]["ports"][0]["nodePort"] in node_ports


def test_the_doc_walks_through_the_steps_in_order_and_says_how_it_was_checked() -> None:
    text = DOC.read_text()
    steps = [
        "kind create cluster --config kind-config.yaml",
        "docker build -f operator/Dockerfile -t agentrun-operator:dev .",
        "docker build -f worker/Dockerfile   -t agentrun-worker:dev .",
        "kind load docker-image agentrun-operator:dev agentrun-worker:dev",
        "kubectl apply -f examples/cluster/",
        "helm install agentrun charts/agentrun --namespace agentrun",
        "--values examples/cluster/helm/kind-values.yaml",
        "kubectl apply -n agentrun -f examples/hello.yaml",
        "agentrun logs -f hello",
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions)
    assert "checked by rendering and validation only" in " ".join(text.replace("**", "").replace("\n>", " ").split())
    images = set(re.findall(r"-t (agentrun-\w+:dev)", text))
    values = yaml.safe_load(KIND_VALUES.read_text())
    built = {f"{values[c]['image']['repository']}:{values[c]['image']['tag']}" for c in ("operator", "workers")}
    assert images == built
