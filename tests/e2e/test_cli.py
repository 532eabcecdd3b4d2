"""The agentrun CLI against the operator, a worker and the API emulator: kubectl's conventions."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.e2e import harness
from tests.e2e.scenarios import manifest

pytestmark = pytest.mark.e2e
BIN = pathlib.Path(sys.executable).parent


def cli(bed: harness.Bed, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentrun"), *args], env=bed.env(), capture_output=True, text=True,
                          timeout=timeout)


def test_submit_refuses_a_bad_manifest_naming_the_field_and_creates_nothing(
    bed: harness.Bed, namespace: str, tmp_path: pathlib.Path
) -> None:
    path = manifest(tmp_path, "bad", namespace, [{"text": "x"}], maxAttempts=0)
    result = cli(bed, "submit", "-f", path, "-n", namespace)
    assert result.returncode == 1
    assert "spec.maxAttempts" in result.stderr
    assert cli(bed, "get", "bad", "-n", namespace).returncode == 1


def test_submit_follow_get_list_and_stop(
    bed: harness.Bed, operator: Any, namespace: str, tmp_path: pathlib.Path
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    # submit --follow streams the answer and ends with the final status
    path = manifest(tmp_path, "quick", namespace, [{"text": "All done here."}])
    result = cli(bed, "submit", "-f", path, "-n", namespace, "--follow")
    assert result.returncode == 0, result.stderr
    assert "agentrun.agentrun.io/quick created" in result.stdout
    assert "All done here." in result.stdout
    assert "Succeeded reason=Completed iterations=1 tokens=" in result.stdout
    # get -o json / yaml
    got = json.loads(cli(bed, "get", "quick", "-n", namespace, "-o", "json").stdout)
    assert got["status"]["phase"] == "Succeeded"
    assert yaml.safe_load(cli(bed, "get", "quick", "-n", namespace, "-o", "yaml").stdout)["metadata"]["name"] == "quick"
    # stop a slow run mid-way, while list -w prints its changes
    watcher = harness.Proc("list-w", [str(BIN / "agentrun"), "list", "-n", namespace, "-w"], bed.env(),
                           tmp_path).start()
    slow = manifest(tmp_path, "slow", namespace, [{"text": "word " * 200, "chunkDelayMs": 50}])
    assert cli(bed, "submit", "-f", slow, "-n", namespace).returncode == 0
    bed.wait_phase(namespace, "slow", "Running")
    stopped = cli(bed, "stop", "slow", "-n", namespace)
    assert stopped.returncode == 0, stopped.stderr
    assert "agentrun.agentrun.io/slow stop requested (phase Running)" in stopped.stdout
    status = bed.wait_phase(namespace, "slow", "Stopped", "Succeeded", "Failed")["status"]
    assert status["phase"] == "Stopped", status
    harness.wait_until(lambda: "Stopped" in watcher.output(), 15, "list -w to print the Stopped phase")
    watcher.stop()
    # list: a table with both runs; --phase filters
    table = cli(bed, "list", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "PHASE", "MODEL", "POOL", "ITERATIONS", "AGE"]
    rows = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert rows == {"quick": "Succeeded", "slow": "Stopped"}
    only = cli(bed, "list", "-n", namespace, "--phase", "Stopped", "-o", "json").stdout
    assert json.loads(only)["metadata"]["name"] == "slow"
    again = cli(bed, "stop", "slow", "-n", namespace)
    assert "already ended: Stopped" in again.stdout


def test_an_unreachable_cluster_is_explained(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{harness.free_port()}"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}], "users": [{"name": "x", "user": {}}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_")}
    env["KUBECONFIG"] = str(kubeconfig)
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

    def agentrun(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "agentrun"), *args], env=env, capture_output=True, text=True, timeout=60)

    # Every run command names the server, kubeconfig and context it tried, and what to do
    for args in (["list"], ["get", "x"], ["stop", "x"], ["list", "-w"]):
        result = agentrun(*args)
        assert result.returncode == 2, args
        assert f"cannot reach the Kubernetes API at {server} (kubeconfig {kubeconfig}, context x)" in result.stderr
        assert "agentrun dev" in result.stderr and "--context" in result.stderr
        assert "Traceback" not in result.stderr
    # A context that is not in the kubeconfig: the ones that are
    result = agentrun("list", "--context", "nope")
    assert result.returncode == 2
    assert "Context 'nope' not found" in result.stderr and "Contexts in the kubeconfig: x" in result.stderr
    # No kubeconfig at all
    env["KUBECONFIG"] = str(tmp_path / "missing")
    result = agentrun("get", "x")
    assert result.returncode == 2 and "no usable Kubernetes configuration" in result.stderr
    assert "agentrun dev" in result.stderr


def test_a_malformed_since_id_is_refused_before_anything_is_asked(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([str(BIN / "agentrun"), "logs", "x", "--since-id", "yesterday"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, AGENTRUN_REDIS_URL="redis://127.0.0.1:1/0"))
    assert result.returncode == 2 and "not a stream entry id" in result.stderr
