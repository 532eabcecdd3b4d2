"""Local mode as a newcomer uses it: ``agentrun demo``, and ``agentrun dev`` with real kubectl.

These run the README's commands as subprocesses on the embedded stand-ins (API emulator,
fakeredis, SQLite, in-process broker), exactly as a fresh machine would.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

import pytest

from agentrun import binaries
from tests.e2e import harness
from tests.e2e.scenarios import local_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
HELLO_TEXT = "Hi there! I am a scripted agent, running as an AgentRun on your cluster."


def test_the_demo_streams_hello_and_exits_zero_after_the_final_phase(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([str(BIN / "agentrun"), "demo"], env=local_env(tmp_path), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert HELLO_TEXT in result.stdout
    assert "That's all for now." in result.stdout
    assert result.stdout.rstrip().endswith("Succeeded reason=Completed iterations=3 tokens=133 (82 in, 51 out)")


def test_dev_serves_kubectl_and_agentrun_logs_follows_a_run(tmp_path: pathlib.Path) -> None:
    env = local_env(tmp_path)
    api_port, redis_port, gateway_port = harness.free_port(), harness.free_port(), harness.free_port()
    dev = harness.Proc("dev", [str(BIN / "agentrun"), "dev", "--api-port", str(api_port),
                               "--redis-port", str(redis_port), "--gateway-port", str(gateway_port)],
                       env, tmp_path).start()
    try:
        harness.wait_until(lambda: "is up" in dev.output() or not dev.alive(), 60, "agentrun dev", 0.1)
        assert dev.alive(), dev.output()
        env.update(KUBECONFIG=str(tmp_path / "state" / "kubeconfig"),
                   AGENTRUN_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
        assert f"export KUBECONFIG={env['KUBECONFIG']} AGENTRUN_REDIS_URL={env['AGENTRUN_REDIS_URL']}" in dev.output()
        kubectl = str(binaries.kubectl())
        applied = subprocess.run([kubectl, "apply", "-f", str(ROOT / "examples" / "hello.yaml")], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        assert "agentrun.io/hello created" in applied.stdout
        logs = subprocess.run([str(BIN / "agentrun"), "logs", "hello", "-f"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert logs.returncode == 0, logs.stderr
        assert HELLO_TEXT in logs.stdout
        assert "Succeeded reason=Completed iterations=3" in logs.stdout
        # the gateway of agentrun dev serves the same run, without a token, on loopback
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        assert f"AGENTRUN_GATEWAY_URL={gateway_url}" in dev.output()
        remote = subprocess.run([str(BIN / "agentrun"), "logs", "hello", "--gateway", gateway_url],
                                env=local_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert remote.returncode == 0, remote.stderr
        assert HELLO_TEXT in remote.stdout and "Succeeded reason=Completed iterations=3" in remote.stdout
        table = subprocess.run([kubectl, "get", "ar"], env=env, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()[:2]
        assert header.split()[:5] == ["NAME", "PHASE", "MODEL", "POOL", "ITERATIONS"]
        assert row.split()[:5] == ["hello", "Succeeded", "scripted", "default", "3"]
    finally:
        if dev.popen is not None and dev.alive():
            dev.popen.send_signal(signal.SIGINT)
            try:
                dev.popen.wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"agentrun dev did not stop on Ctrl-C:\n{dev.output()[-3000:]}")
        dev.stop()
    assert dev.popen is not None and dev.popen.returncode == 0, dev.output()[-3000:]
