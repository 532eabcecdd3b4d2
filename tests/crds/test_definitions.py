"""The CRDs in ``crds/`` themselves: valid apiextensions/v1 objects, structural, documented.

``kubectl apply --dry-run=client`` cannot check them here: even a client-side dry run asks an
API server for discovery and the OpenAPI document. The CRD objects are checked instead with
``kubernetes-validate`` (the published JSON schemas of Kubernetes 1.33, strict: unknown fields
refused), and the structural-schema rules of apiextensions-apiserver are checked by walking
the schemas here.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import pytest

from agentrun import schema

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
KUBERNETES_VERSION = "1.33.0"

#: The only subtrees that keep unknown fields: core/v1 types WorkerPool passes through.
PRESERVED = {
    "workerpools.agentrun.io": {"spec.resources", "spec.env[]", "spec.envFrom[]"},
}


def crds() -> list[dict[str, Any]]:
    return [schema.load_crd(p) for p in CRD_FILES]


def nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), Mapping):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from nodes(node["additionalProperties"], f"{path}[*]")


def version_schemas() -> Iterator[tuple[str, Mapping[str, Any]]]:
    for crd in crds():
        for version in crd["spec"]["versions"]:
            yield f"{crd['metadata']['name']}/{version['name']}", version["schema"]["openAPIV3Schema"]


def test_one_crd_per_file_for_each_kind() -> None:
    assert [p.name for p in CRD_FILES] == ["agentrun.yaml", "agentworkflow.yaml", "workerpool.yaml"]
    kinds = sorted(crd["spec"]["names"]["kind"] for crd in crds())
    assert kinds == ["AgentRun", "AgentWorkflow", "WorkerPool"]


@pytest.mark.parametrize("path", CRD_FILES, ids=[p.name for p in CRD_FILES])
def test_crd_is_a_valid_apiextensions_v1_object(path: pathlib.Path) -> None:
    import kubernetes_validate

    crd = schema.load_crd(path)
    try:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name}: {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("path", CRD_FILES, ids=[p.name for p in CRD_FILES])
def test_crd_names_and_served_version(path: pathlib.Path) -> None:
    crd = schema.load_crd(path)
    spec, names = crd["spec"], crd["spec"]["names"]
    assert spec["group"] == "agentrun.io" and spec["scope"] == "Namespaced"
    assert crd["metadata"]["name"] == f"{names['plural']}.agentrun.io"
    assert names["categories"] == ["agents"]
    assert names["shortNames"] == {"AgentRun": ["ar"], "WorkerPool": ["wp"], "AgentWorkflow": ["awf"]}[names["kind"]]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    # A workflow is a definition nobody reports on: no status (so no status subresource)
    assert version.get("subresources") == (None if names["kind"] == "AgentWorkflow" else {"status": {}})


def test_printer_columns() -> None:
    columns = {
        crd["spec"]["names"]["kind"]: [(c["name"], c["jsonPath"], c["type"], c.get("priority", 0))
                                       for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        for crd in crds()
    }
    assert columns["AgentRun"] == [
        ("Phase", ".status.phase", "string", 0),
        ("Model", ".spec.agent.model", "string", 0),
        ("Pool", ".spec.workerPool", "string", 0),
        ("Iterations", ".status.iterations", "integer", 0),
        ("Reason", ".status.reason", "string", 1),
        ("Workflow", ".spec.workflowRef.name", "string", 1),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ]
    assert columns["AgentWorkflow"] == [
        ("Executor", ".spec.executor", "string", 0),
        ("Model", ".spec.agent.model", "string", 0),
        ("Description", ".spec.description", "string", 1),  # the API server prints one match of a path
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ]
    assert columns["WorkerPool"] == [
        ("Desired", ".status.desiredReplicas", "integer", 0),
        ("Ready", ".status.readyReplicas", "integer", 0),
        ("Queued", ".status.queued", "integer", 0),
        ("Running", ".status.running", "integer", 0),
        ("Mode", ".spec.autoscaling.mode", "string", 1),
        ("Age", ".metadata.creationTimestamp", "date", 0),
    ]


@pytest.mark.parametrize("name, root", list(version_schemas()), ids=[n for n, _ in version_schemas()])
def test_every_field_is_described_and_typed(name: str, root: Mapping[str, Any]) -> None:
    undocumented = [path or "<root>" for path, node in nodes(root) if not str(node.get("description", "")).strip()]
    untyped = [path or "<root>" for path, node in nodes(root) if "type" not in node]
    assert undocumented == [] and untyped == []
    assert schema.check_crd(next(c for c in crds() if name.startswith(c["metadata"]["name"]))) == []


@pytest.mark.parametrize("name, root", list(version_schemas()), ids=[n for n, _ in version_schemas()])
def test_schema_is_structural(name: str, root: Mapping[str, Any]) -> None:
    crd_name = name.split("/")[0]
    preserved = {path for path, node in nodes(root) if node.get("x-kubernetes-preserve-unknown-fields")}
    assert preserved == PRESERVED.get(crd_name, set())
    for path, node in nodes(root):
        # apiextensions-apiserver refuses these in a structural schema
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            item = node["items"]
            assert set(keys) <= set(item.get("required", [])), f"{path}: map keys must be required"
        if "default" in node:
            assert path != "", "no default at the root"
    top = {"apiVersion", "kind", "metadata", "spec"} | ({"status"} if "status" in root["properties"] else set())
    assert set(root["properties"]) == top
    assert ("status" in root["properties"]) == (crd_name != "agentworkflows.agentrun.io")


def rules() -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, root in version_schemas():
        for path, node in nodes(root):
            for rule in node.get("x-kubernetes-validations", []):
                yield f"{name}:{path}", rule


@pytest.mark.parametrize("where, rule", list(rules()), ids=[f"{w}:{r['rule'][:30]}" for w, r in rules()])
def test_cel_rule_compiles_and_explains_itself(where: str, rule: Mapping[str, Any]) -> None:
    environment = celpy.Environment()
    environment.program(environment.compile(rule["rule"]))
    assert rule.get("message", "").strip(), f"{where}: a rule needs a message people understand"
    assert "oldSelf" not in rule["rule"], "transition rules are not evaluated by agentrun.schema"
    if "fieldPath" in rule:
        assert rule["fieldPath"].startswith(".")


def test_at_least_the_documented_cross_field_rules() -> None:
    found = {(where.split(":")[1], rule["message"]) for where, rule in rules()}
    assert ("spec", "exactly one of input, inputFrom or inputParts must be set") in found
    assert ("spec", "exactly one of agent, agentRef or workflowRef must be set") in found
    assert ("spec.agent", "script is only allowed when model is 'scripted'") in found
    assert ("spec.agent.script[]", "exactly one of text or fail must be set") in found
    assert ("spec.agent.mcpServers[]", "url is required when transport is http") in found
    assert ("spec", "minReplicas must be less than or equal to maxReplicas") in found
    assert ("spec.steps", "step names must be unique") in found


def test_a_workflow_agent_is_the_run_agent() -> None:
    # Given the two CRDs (a CRD cannot reference another's schema, so AgentWorkflow copies it)
    by_kind = {crd["spec"]["names"]["kind"]: crd for crd in crds()}

    def spec_of(kind: str) -> Mapping[str, Any]:
        root: Mapping[str, Any] = by_kind[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return root["properties"]["spec"]  # type: ignore[no-any-return]

    run_agent = dict(spec_of("AgentRun")["properties"]["agent"])
    workflow_agent = dict(spec_of("AgentWorkflow")["properties"]["agent"])
    # Then spec.agent of a workflow is spec.agent of a run, but for its description
    run_agent.pop("description")
    workflow_agent.pop("description")
    assert workflow_agent == run_agent, "run scripts/sync-crds: it copies the run's spec.agent into the workflow CRD"
    # And a step's overrides have the run agent's bounds
    step = spec_of("AgentWorkflow")["properties"]["steps"]["items"]["properties"]
    for field in ("model", "systemPrompt", "tools", "maxIterations", "script"):
        expected = {k: v for k, v in run_agent["properties"][field].items() if k not in ("description", "default")}
        assert {k: v for k, v in step[field].items() if k not in ("description", "default")} == expected, field
