"""``agentrun dev`` serves WorkerPools as a cluster's operator would: a pool applied later gets a
worker, a deleted pool's worker stops (its runs are no longer taken), and a pool applied again
gets its worker back. ``agentrun dev`` is a subprocess with its embedded defaults, driven by
the real kubectl; ports, state and kube cache are the test's own.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import yaml

from agentrun import binaries
from tests.e2e import harness

pytestmark = pytest.mark.e2e
BIN = pathlib.Path(sys.executable).parent


def test_a_pool_applied_deleted_and_applied_again(tmp_path: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_") and k != "KUBECONFIG"}
    env.update(AGENTRUN_STATE_DIR=str(tmp_path / "state"), KUBECACHEDIR=str(tmp_path / "kubecache"),
               PYTHONUNBUFFERED="1", AGENTRUN_POOL_WAIT_SECONDS="2")
    dev = harness.Proc("dev", [str(BIN / "agentrun"), "dev", "--api-port", str(harness.free_port()), "--redis-port",
                               str(harness.free_port()), "--gateway-port", str(harness.free_port())],
                       env, tmp_path).start()
    kubectl = str(binaries.kubectl())
    env["KUBECONFIG"] = str(tmp_path / "state" / "kubeconfig")

    def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([kubectl, *argv], env=env, capture_output=True, text=True, timeout=60, input=stdin)
        assert result.returncode == 0, result.stderr
        return result

    def apply(*docs: dict[str, object]) -> None:
        run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def phase(name: str) -> str:
        return str((json.loads(run("get", "ar", name, "-o", "json").stdout).get("status") or {}).get("phase", ""))

    def ready(pool: str) -> object:
        return (json.loads(run("get", "wp", pool, "-o", "json").stdout).get("status") or {}).get("readyReplicas")

    def agent_run(name: str) -> dict[str, object]:
        return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": name},
                "spec": {"input": "hi", "workerPool": "later", "agent": {"model": "scripted",
                                                                         "script": [{"text": "done"}]}}}

    pool = {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "later"}, "spec": {}}
    try:
        harness.wait_until(lambda: "Ctrl-C stops everything" in dev.output() or not dev.alive(), 60, "dev", 0.1)
        assert dev.alive(), dev.output()
        # Given a pool applied after dev started: its runs run, and it shows its worker
        apply(pool, agent_run("first"))
        harness.wait_until(lambda: phase("first") == "Succeeded", 20, "first to succeed", 0.2)
        harness.wait_until(lambda: ready("later") == 1, 10, "READY 1", 0.2)
        # When the pool is deleted (its Deployment goes with it), dev stops its worker
        run("delete", "wp", "later")
        harness.wait_until(lambda: "dev.pool_worker_stopped" in dev.output(), 10, "the pool's worker to stop", 0.1)
        assert "later-workers" not in run("get", "deploy", "-o", "name").stdout
        # Then once the pool is applied again, its worker is back and runs its runs
        apply(pool, agent_run("second"))
        harness.wait_until(lambda: phase("second") == "Succeeded", 20, "second to succeed", 0.2)
        assert dev.output().count("dev.pool_worker_started") >= 3  # default, later, later again
    finally:
        if dev.popen is not None and dev.alive():
            dev.popen.send_signal(signal.SIGINT)
            try:
                dev.popen.wait(20)
            except subprocess.TimeoutExpired:
                dev.kill()
    assert dev.popen is not None and dev.popen.returncode == 0, dev.output()[-3000:]
