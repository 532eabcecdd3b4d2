"""``agentrun submit -f`` takes what ``kubectl apply -f`` takes of agentrun's kinds.

The project's own examples hold WorkerPools and AgentWorkflows beside their AgentRuns; submit
refused them. It must create every agentrun kind of a file (pools and workflows first, so the
runs' references resolve), validating each locally first, and refuse core kinds clearly,
creating nothing. An API emulator of the test's own: no operator is needed to see what was
created.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid

import lightkube
import lightkube.codecs
import pytest
import yaml

from agentrun import kube
from tests.e2e.emulated import api  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
Api = tuple[lightkube.Client, pathlib.Path]


def submit(kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_")}
    env.update(KUBECONFIG=str(kubeconfig), COLUMNS="300")
    return subprocess.run([str(BIN / "agentrun"), "submit", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def namespace(client: lightkube.Client, *, default_pool: bool = False) -> str:
    name = f"submit-{uuid.uuid4().hex[:8]}"
    client.create(lightkube.codecs.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    if default_pool:  # as examples/workerpool-default.yaml, which the examples' comments apply first
        client.create(lightkube.codecs.from_dict({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                                                  "metadata": {"name": "default", "namespace": name}, "spec": {}}))
    return name


def names(client: lightkube.Client, kind: type, ns: str) -> list[str]:
    return sorted(kube.to_dict(o)["metadata"]["name"] for o in client.list(kind, namespace=ns))


@pytest.mark.parametrize("example", ["workflow.yaml", "mcp-tools.yaml", "mcp-tools-offline.yaml"])
def test_submit_takes_the_projects_own_examples(api: Api, example: str) -> None:  # noqa: F811
    client, kubeconfig = api
    ns = namespace(client, default_pool=True)
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / example).read_text()) if d]
    result = submit(kubeconfig, "-f", str(ROOT / "examples" / example), "-n", ns)
    assert result.returncode == 0, result.stderr
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        assert f"{kind.lower()}.agentrun.io/{name} created" in result.stdout, result.stdout
        resource = {"AgentRun": kube.AgentRun, "WorkerPool": kube.WorkerPool, "AgentWorkflow": kube.AgentWorkflow}[kind]
        assert name in names(client, resource, ns)
    # the runs come after what they refer to
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("agentrun.agentrun.io/"), lines


def test_submitting_a_pool_again_updates_it_like_apply(api: Api, tmp_path: pathlib.Path) -> None:  # noqa: F811
    client, kubeconfig = api
    ns = namespace(client)
    path = tmp_path / "pool.yaml"
    pool = {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
            "spec": {"threads": 2}}
    path.write_text(yaml.safe_dump(pool))
    assert submit(kubeconfig, "-f", str(path), "-n", ns).returncode == 0
    pool["spec"]["threads"] = 4
    path.write_text(yaml.safe_dump(pool))
    again = submit(kubeconfig, "-f", str(path), "-n", ns)
    assert again.returncode == 0, again.stderr
    assert "workerpool.agentrun.io/p configured" in again.stdout
    stored = kube.to_dict(client.get(kube.WorkerPool, "p", namespace=ns))
    assert stored["spec"]["threads"] == 4


def test_a_core_kind_is_refused_clearly_and_nothing_is_created(api: Api, tmp_path: pathlib.Path) -> None:  # noqa: F811
    client, kubeconfig = api
    ns = namespace(client)
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prompt"}, "data": {"input": "hi"}},
        {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": "r"},
         "spec": {"input": "hi", "agent": {"model": "scripted"}}},
    ]))
    result = submit(kubeconfig, "-f", str(path), "-n", ns)
    assert result.returncode != 0
    assert "ConfigMap" in result.stderr and "kubectl apply -f" in result.stderr, result.stderr
    assert names(client, kube.AgentRun, ns) == []


def test_a_bad_pool_is_refused_naming_the_field_and_nothing_is_created(
    api: Api, tmp_path: pathlib.Path  # noqa: F811
) -> None:
    client, kubeconfig = api
    ns = namespace(client)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([
        {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
         "spec": {"threads": 0}},
        {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": "r"},
         "spec": {"input": "hi", "agent": {"model": "scripted"}, "workerPool": "p"}},
    ]))
    result = submit(kubeconfig, "-f", str(path), "-n", ns)
    assert result.returncode == 1
    assert "spec.threads" in result.stderr and "WorkerPool" in result.stderr, result.stderr
    assert names(client, kube.WorkerPool, ns) == [] and names(client, kube.AgentRun, ns) == []
