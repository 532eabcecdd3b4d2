"""The real kubectl (v1.33) against the emulator, with the project's own CRDs from crds/.

Each test gets a fresh server, a kubeconfig and its own KUBECACHEDIR (kubectl caches discovery
per host:port), and runs kubectl as a user would: apply, get, get -w, describe, delete.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from agentrun_local import emulator

from agentrun import binaries
from tests.emulator.conftest import ROOT

CRDS = ROOT / "crds"

RUN = """\
apiVersion: agentrun.io/v1alpha1
kind: AgentRun
metadata:
  name: hello
spec:
  input: Say hello
  workerPool: default
  agent:
    model: gpt-test
    maxIterations: 3
"""


class Kubectl:
    def __init__(self, server: emulator.EmulatorServer, tmp_path: pathlib.Path) -> None:
        self.server = server
        self.binary = str(binaries.kubectl())
        self.env = {**os.environ, "KUBECONFIG": str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                    "KUBECACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
        self.tmp_path = tmp_path

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], env=self.env, input=stdin, capture_output=True,
                                text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([self.binary, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def manifest(self, name: str, text: str) -> str:
        path = self.tmp_path / name
        path.write_text(text)
        return str(path)


@pytest.fixture
def kubectl(tmp_path: pathlib.Path) -> Iterator[Kubectl]:
    with emulator.EmulatorServer() as server:
        yield Kubectl(server, tmp_path)
        assert server.call(lambda: list(server.emulator.errors)) == []


def test_apply_crds_then_a_run_and_get_it(kubectl: Kubectl) -> None:
    """kubectl apply -f crds/ registers AgentRun and WorkerPool; apply of a run creates it (with
    kubectl's default server-side field validation); get ar prints the CRD's printer columns;
    get -o json returns the object; a status write shows in the Phase and Iterations columns."""
    applied = kubectl("apply", "-f", str(CRDS))
    assert "customresourcedefinition.apiextensions.k8s.io/agentruns.agentrun.io created" in applied.stdout
    assert "workerpools.agentrun.io created" in applied.stdout
    manifest = kubectl.manifest("run.yaml", RUN)
    assert kubectl("apply", "-f", manifest).stdout.strip() == "agentrun.agentrun.io/hello created"
    assert kubectl("apply", "-f", manifest).stdout.strip() == "agentrun.agentrun.io/hello unchanged"

    table = kubectl("get", "ar").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "MODEL", "POOL", "ITERATIONS", "AGE"]
    assert table[1].split()[:3] == ["hello", "gpt-test", "default"]
    httpx.patch(f"{kubectl.server.url}/apis/agentrun.io/v1alpha1/namespaces/default/agentruns/hello/status",
                headers={"Content-Type": "application/merge-patch+json"},
                content=b'{"status":{"phase":"Running","iterations":7,"reason":"Started"}}').raise_for_status()
    assert kubectl("get", "ar").stdout.splitlines()[1].split()[:5] == ["hello", "Running", "gpt-test", "default", "7"]
    wide = kubectl("get", "ar", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "MODEL", "POOL", "ITERATIONS", "REASON", "WORKFLOW", "AGE"]
    assert kubectl("get", "agents").stdout.splitlines()[1].startswith("agentrun.agentrun.io/hello")

    obj = json.loads(kubectl("get", "ar", "hello", "-o", "json").stdout)
    assert obj["kind"] == "AgentRun" and obj["spec"]["agent"]["maxIterations"] == 3
    assert obj["metadata"]["uid"] and obj["metadata"]["generation"] == 1
    established = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    assert kubectl("get", "crd", "agentruns.agentrun.io", "-o", established).stdout == "True"


def test_get_watch_prints_each_change(kubectl: Kubectl) -> None:
    """kubectl get ar NAME -w prints the row again when the object changes (a status write)."""
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-f", kubectl.manifest("run.yaml", RUN))
    watcher = kubectl.popen("get", "ar", "hello", "-w")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while len(lines) < 2 and time.monotonic() < deadline:  # header + the initial row
            time.sleep(0.05)
        kubectl("patch", "ar", "hello", "--subresource=status", "--type=merge",
                "-p", '{"status":{"phase":"Running","iterations":2}}')
        while not any("Running" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.kill()
        watcher.wait()
    assert lines[0].split()[:5] == ["NAME", "PHASE", "MODEL", "POOL", "ITERATIONS"]
    running = next(line for line in lines if "Running" in line)
    assert running.split()[:5] == ["hello", "Running", "gpt-test", "default", "2"]


def test_describe_shows_the_object_and_its_events(kubectl: Kubectl) -> None:
    """kubectl describe ar NAME shows the spec and the Events posted about the run (found by
    involvedObject field selectors)."""
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-f", kubectl.manifest("run.yaml", RUN))
    run = kubectl.server.get("agentrun.io/v1alpha1", "agentruns", "default", "hello")
    assert run is not None
    kubectl.server.create({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "hello-"},
                           "involvedObject": {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                                              "name": "hello", "namespace": "default", "uid": run["metadata"]["uid"]},
                           "reason": "Queued", "message": "queued on pool default", "type": "Normal",
                           "source": {"component": "agentrun-operator"},
                           "firstTimestamp": run["metadata"]["creationTimestamp"],
                           "lastTimestamp": run["metadata"]["creationTimestamp"], "count": 1})
    described = kubectl("describe", "ar", "hello").stdout
    assert "Name:         hello" in described
    assert re.search(r"Max Iterations:\s+3\n", described)
    events = described.split("Events:")[1]
    assert re.search(r"Normal\s+Queued\s+\d+s\s+agentrun-operator\s+queued on pool default", events)


def test_delete_waits_for_the_object_to_go(kubectl: Kubectl) -> None:
    """kubectl delete ar NAME deletes it (and waits, watching, until it is gone)."""
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-f", kubectl.manifest("run.yaml", RUN))
    assert kubectl("delete", "ar", "hello").stdout.strip() == 'agentrun.agentrun.io "hello" deleted'
    assert "No resources found" in kubectl("get", "ar").stderr


def test_invalid_manifest_is_refused_naming_the_field(kubectl: Kubectl) -> None:
    """kubectl apply of an invalid run fails with the API server's message naming the field;
    a misspelt field is refused as unknown (kubectl validates strictly by default)."""
    kubectl("apply", "-f", str(CRDS))
    bad = kubectl("apply", "-f", kubectl.manifest("bad.yaml", RUN.replace("maxIterations: 3", "maxIterations: 0")),
                  check=False)
    assert bad.returncode != 0
    assert 'The AgentRun "hello" is invalid' in bad.stderr
    assert "spec.agent.maxIterations: Invalid value: 0" in bad.stderr
    typo = kubectl("apply", "-f", kubectl.manifest("typo.yaml", RUN.replace("workerPool:", "workerpool:")),
                   check=False)
    assert typo.returncode != 0
    assert 'unknown field "spec.workerpool"' in typo.stderr


def test_api_resources_and_explain(kubectl: Kubectl) -> None:
    """Discovery and OpenAPI are complete enough for kubectl api-resources and explain."""
    kubectl("apply", "-f", str(CRDS))
    resources = kubectl("api-resources", "--api-group=agentrun.io").stdout
    assert "agentruns" in resources and "AgentRun" in resources and " ar " in resources
    explained = kubectl("explain", "ar.spec.agent").stdout
    assert "maxIterations" in explained


def test_create_of_builtins_sent_as_protobuf(kubectl: Kubectl) -> None:
    """kubectl create namespace/configmap/secret/serviceaccount sends protobuf bodies (and does
    not fall back to JSON); they are decoded and stored like JSON ones. Other kinds in protobuf
    get a 415 that says to use JSON."""
    assert kubectl("create", "namespace", "demo").stdout.strip() == "namespace/demo created"
    kubectl("-n", "demo", "create", "configmap", "settings", "--from-literal=mode=fast")
    kubectl("-n", "demo", "create", "secret", "generic", "model-key", "--from-literal=token=s3cret")
    kubectl("-n", "demo", "create", "serviceaccount", "robot")
    assert kubectl.server.get("v1", "configmaps", "demo", "settings")["data"] == {"mode": "fast"}  # type: ignore[index]
    secret = kubectl.server.get("v1", "secrets", "demo", "model-key")
    assert secret is not None and secret["type"] == "Opaque" and secret["data"] == {"token": "czNjcmV0"}
    assert kubectl.server.get("v1", "serviceaccounts", "demo", "robot") is not None
    refused = kubectl("-n", "demo", "create", "deployment", "web", "--image=nginx", check=False)
    assert refused.returncode != 0 and "send other kinds as JSON" in refused.stderr
    assert kubectl("delete", "namespace", "demo").stdout.strip() == 'namespace "demo" deleted'
    assert kubectl.server.get("v1", "namespaces", None, "demo") is None
