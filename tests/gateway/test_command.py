"""``agentrun gateway`` (the command the chart runs) serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import httpx

from tests.e2e import harness

BIN = pathlib.Path(sys.executable).parent


def test_the_gateway_command_serves_health_and_stops_on_sigterm(tmp_path: pathlib.Path, redis_url: str) -> None:
    from agentrun_local import emulator

    port = harness.free_port()
    with emulator.EmulatorServer() as server:
        env = dict(os.environ, KUBECONFIG=str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                   AGENTRUN_REDIS_URL=redis_url, AGENTRUN_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}",
                   AGENTRUN_GATEWAY_INSECURE_NO_AUTH="true")
        command = [str(BIN / "agentrun"), "gateway", "--host", "127.0.0.1", "--port", str(port)]
        proc = harness.Proc("gateway", command, env, tmp_path).start()
        try:
            def healthy() -> bool:
                assert proc.alive(), proc.output()
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            harness.wait_until(healthy, 30, "the gateway to answer /healthz", 0.1)
            assert proc.popen is not None
            proc.popen.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why
            assert proc.popen.wait(20) in (0, -signal.SIGTERM), proc.output()
            assert "Finished server process" in proc.output()
        finally:
            proc.stop()


def test_the_gateway_command_refuses_no_auth_on_all_interfaces(tmp_path: pathlib.Path, redis_url: str) -> None:
    env = dict(os.environ, AGENTRUN_REDIS_URL=redis_url, AGENTRUN_GATEWAY_INSECURE_NO_AUTH="true",
               AGENTRUN_DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    env.pop("AGENTRUN_GATEWAY_HOST", None)
    port = harness.free_port()
    for host in ([], ["--host", "0.0.0.0"]):  # the default host is every interface
        done = subprocess.run([str(BIN / "agentrun"), "gateway", *host, "--port", str(port)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "AGENTRUN_GATEWAY_INSECURE_NO_AUTH" in done.stderr and "127.0.0.1 or ::1" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
