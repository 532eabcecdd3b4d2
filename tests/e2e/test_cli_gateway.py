"""The agentrun CLI through the gateway: a real gateway process in front of the API emulator,
with the real operator, real workers, RabbitMQ, Redis and PostgreSQL behind it.

Every command here runs with ``--gateway`` (or ``AGENTRUN_GATEWAY_URL``) and an environment
without ``KUBECONFIG`` or ``AGENTRUN_REDIS_URL``, so nothing can reach the cluster or Redis
except through the gateway.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import yaml

from tests.e2e import harness
from tests.e2e.scenarios import manifest

pytestmark = pytest.mark.e2e
BIN = pathlib.Path(sys.executable).parent
SECRET = "cli-e2e-secret-that-is-long-enough-for-hs256"


def token(*namespaces: str, expires_in: float = 600, audience: str = "agentrun") -> str:
    claims = {"sub": "cli-test", "aud": audience, "exp": int(time.time() + expires_in),
              "namespaces": list(namespaces) or ["*"]}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Gateway:
    """``agentrun gateway`` as a subprocess on a fixed port, so it can be killed and started again."""

    def __init__(self, bed: harness.Bed, log_dir: pathlib.Path) -> None:
        self.bed = bed
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: harness.Proc | None = None

    def start(self) -> Gateway:
        env = self.bed.env(AGENTRUN_GATEWAY_JWT_SECRET=SECRET, AGENTRUN_GATEWAY_REDIS_BLOCK_MS="200",
                           AGENTRUN_GATEWAY_HEARTBEAT_SECONDS="1")
        self.proc = harness.Proc("gateway", [str(BIN / "agentrun"), "gateway", "--host", "127.0.0.1",
                                             "--port", str(self.port)], env, self.log_dir).start()

        def healthy() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise AssertionError(f"the gateway exited:\n{self.proc.output()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        harness.wait_until(healthy, 60, "the gateway to answer /healthz", interval=0.1)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()


@pytest.fixture(scope="module")
def gateway(bed: harness.Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(bed, tmp_path_factory.mktemp("gateway")).start()
    yield gw
    if gw.proc is not None:
        gw.proc.stop()


def remote_env(gateway: Gateway, **extra: str) -> dict[str, str]:
    """An environment that reaches runs only through the gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_") and k != "KUBECONFIG"}
    env.update(AGENTRUN_GATEWAY_URL=gateway.url, AGENTRUN_TOKEN=token(), KUBECONFIG="/nonexistent/kubeconfig",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentrun"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_follow_get_and_list_through_the_gateway(
    bed: harness.Bed, operator: Any, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    env = remote_env(gateway)
    # submit --follow creates the run through the gateway and streams it over SSE to the end
    path = manifest(tmp_path, "remote", namespace, [{"text": "Streamed through the gateway."}])
    result = cli(env, "submit", "-f", path, "-n", namespace, "--follow")
    assert result.returncode == 0, result.stderr
    assert "agentrun.agentrun.io/remote created" in result.stdout
    assert "Streamed through the gateway." in result.stdout
    assert "Succeeded reason=Completed iterations=1 tokens=" in result.stdout
    assert bed.get_run(namespace, "remote")["status"]["phase"] == "Succeeded"
    # list -o json and get -o yaml give the resource as the API server has it
    listed = json.loads(cli(env, "list", "-n", namespace, "-o", "json").stdout)
    assert listed["metadata"]["name"] == "remote" and listed["status"]["phase"] == "Succeeded"
    got = yaml.safe_load(cli(env, "get", "remote", "-n", namespace, "-o", "yaml").stdout)
    assert got["metadata"]["uid"] == bed.get_run(namespace, "remote")["metadata"]["uid"]
    table = cli(env, "list", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "PHASE"] and table[1].split()[:2] == ["remote", "Succeeded"]
    # logs of a finished run replays the whole stream and ends
    replay = cli(env, "logs", "remote", "-n", namespace)
    assert replay.returncode == 0, replay.stderr
    assert "Streamed through the gateway." in replay.stdout and "Succeeded reason=Completed" in replay.stdout
    # -A is refused with what to do instead
    every = cli(env, "list", "-A")
    assert every.returncode == 1 and "one namespace at a time" in every.stderr and "-n NAMESPACE" in every.stderr


def test_stop_and_list_watch_through_the_gateway(
    bed: harness.Bed, operator: Any, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    bed.start_worker(f"agentrun.{namespace}.default")
    env = remote_env(gateway)
    watcher = harness.Proc("list-w", [str(BIN / "agentrun"), "list", "-n", namespace, "-w"], env, tmp_path).start()
    try:
        slow = manifest(tmp_path, "slow", namespace, [{"text": "word " * 300, "chunkDelayMs": 50}])
        assert cli(env, "submit", "-f", slow, "-n", namespace).returncode == 0
        bed.wait_phase(namespace, "slow", "Running")
        stopped = cli(env, "stop", "slow", "-n", namespace)
        assert stopped.returncode == 0, stopped.stderr
        assert "agentrun.agentrun.io/slow stop requested (phase Running)" in stopped.stdout
        status = bed.wait_phase(namespace, "slow", "Stopped", "Succeeded", "Failed")["status"]
        assert status["phase"] == "Stopped", status
        # list -w through the gateway polls and prints each change as one line
        harness.wait_until(lambda: "Stopped" in watcher.output(), 30, "list -w to print the Stopped phase")
        assert watcher.output().splitlines()[-1].split()[:2] == ["slow", "Stopped"]
    finally:
        watcher.stop()
    again = cli(env, "stop", "slow", "-n", namespace)
    assert again.returncode == 0 and "already ended: Stopped" in again.stdout
    # the stream says how it ended
    logs = cli(env, "logs", "slow", "-n", namespace)
    assert "Stopped reason=" in logs.stdout, logs.stdout + logs.stderr


def test_logs_of_a_queued_run_says_so_and_follow_waits_for_it(
    bed: harness.Bed, operator: Any, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    env = remote_env(gateway)
    # Given a run queued on a pool with no worker yet
    path = manifest(tmp_path, "waiting", namespace, [{"text": "Finally my turn."}])
    assert cli(env, "submit", "-f", path, "-n", namespace).returncode == 0
    bed.wait_phase(namespace, "waiting", "Queued")
    # When its logs are asked for, the CLI says it is queued, on which pool, and that -f waits
    result = cli(env, "logs", "waiting", "-n", namespace)
    assert result.returncode == 1
    assert 'AgentRun "waiting" is still Queued on pool "default"' in result.stderr
    assert f"agentrun logs waiting -n {namespace} -f" in result.stderr
    assert "Traceback" not in result.stderr
    # And logs -f waits, then follows the run once a worker takes it
    follower = harness.Proc("logs-f", [str(BIN / "agentrun"), "logs", "waiting", "-n", namespace, "-f"], env,
                            tmp_path).start()
    try:
        harness.wait_until(lambda: "waiting for it to start" in follower.output(), 30, "the waiting notice")
        bed.start_worker(f"agentrun.{namespace}.default")
        assert follower.popen is not None
        assert follower.popen.wait(60) == 0, follower.output()
    finally:
        follower.stop()
    assert "Finally my turn." in follower.output()
    assert "Succeeded reason=Completed" in follower.output()


def test_a_missing_pool_is_explained_by_either_way_in(
    bed: harness.Bed, operator: Any, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    path = manifest(tmp_path, "nopool", namespace, [{"text": "x"}], workerPool="nope")
    # Straight to the cluster: refused before anything is created, naming the pools there
    direct = subprocess.run([str(BIN / "agentrun"), "submit", "-f", path, "-n", namespace], env=bed.env(),
                            capture_output=True, text=True, timeout=60)
    assert direct.returncode == 1
    assert 'spec.workerPool: WorkerPool "nope" not found' in direct.stderr and "pools there: default" in direct.stderr
    assert "Traceback" not in direct.stderr
    # Through the gateway (which cannot list pools) the run fails, and --follow shows why and what to do
    remote = cli(remote_env(gateway), "submit", "-f", path, "-n", namespace, "--follow")
    assert remote.returncode == 1
    assert "Failed reason=WorkerPoolNotFound" in remote.stdout, remote.stdout + remote.stderr
    assert "Create the WorkerPool" in remote.stderr


def test_refusals_and_unreachable_gateways_say_what_to_do(
    bed: harness.Bed, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "mine", "namespace": namespace},
                "spec": {"input": "hi", "agent": {"model": "scripted"}}})
    # a token that is not valid: 401, and what to do
    bad = cli(remote_env(gateway, AGENTRUN_TOKEN="not-a-jwt"), "get", "mine", "-n", namespace)
    assert bad.returncode == 1
    assert "the gateway refused the token" in bad.stderr and "fresh token" in bad.stderr
    expired = cli(remote_env(gateway, AGENTRUN_TOKEN=token(expires_in=-3600)), "list", "-n", namespace)
    assert expired.returncode == 1 and "expired" in expired.stderr
    # no token at all
    env = remote_env(gateway)
    del env["AGENTRUN_TOKEN"]
    missing = cli(env, "get", "mine", "-n", namespace)
    assert missing.returncode == 1 and "Set AGENTRUN_TOKEN, or pass --token-file" in missing.stderr
    # --token-file: the token is read from a file, never given on the command line
    token_file = tmp_path / "token"
    token_file.write_text(token(namespace) + "\n")
    from_file = cli(env, "get", "mine", "-n", namespace, "--token-file", str(token_file), "-o", "json")
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["metadata"]["name"] == "mine"
    # a token for another namespace: 403, and what to do
    other = cli(remote_env(gateway, AGENTRUN_TOKEN=token("someone-else")), "get", "mine", "-n", namespace)
    assert other.returncode == 1
    assert f'may not use namespace "{namespace}"' in other.stderr and "namespaces claim" in other.stderr
    # a run that does not exist
    nope = cli(remote_env(gateway), "logs", "nope", "-n", namespace, "-f")
    assert nope.returncode == 1
    assert f'AgentRun "nope" not found in namespace "{namespace}"' in nope.stderr
    assert f"agentrun list -n {namespace}" in nope.stderr
    # a gateway that is not there
    gone = cli(remote_env(gateway, AGENTRUN_GATEWAY_URL=f"http://127.0.0.1:{harness.free_port()}"),
               "list", "-n", namespace)
    assert gone.returncode == 2
    assert "cannot reach the gateway at http://127.0.0.1:" in gone.stderr and "AGENTRUN_GATEWAY_URL" in gone.stderr
    for result in (bad, expired, missing, other, nope, gone):
        assert "Traceback" not in result.stderr, result.stderr


def test_logs_follow_resumes_after_the_gateway_drops_the_connection(
    bed: harness.Bed, operator: Any, namespace: str, tmp_path: pathlib.Path
) -> None:
    # Given a gateway of this test's own, and a run that streams numbered words slowly
    gw = Gateway(bed, tmp_path).start()
    try:
        bed.start_worker(f"agentrun.{namespace}.default")
        words = [f"w{i:03d}" for i in range(120)]
        env = remote_env(gw)
        path = manifest(tmp_path, "long", namespace, [{"text": " ".join(words), "chunkDelayMs": 50}])
        assert cli(env, "submit", "-f", path, "-n", namespace).returncode == 0
        follower = harness.Proc("logs-f", [str(BIN / "agentrun"), "logs", "long", "-n", namespace, "-f"], env,
                                tmp_path).start()
        # When the gateway dies mid-stream and comes back on the same address
        harness.wait_until(lambda: "w010" in follower.output(), 60, "the stream to start")
        gw.kill()
        seen_before = follower.output()
        assert "w119" not in seen_before
        gw.start()
        # Then the CLI reconnects with Last-Event-ID and prints every word exactly once, in order
        assert follower.popen is not None
        assert follower.popen.wait(90) == 0, follower.output()
        text = follower.output()
        printed = [w for w in text.split() if w.startswith("w") and w[1:].isdigit()]
        assert printed == words, text
        assert "Succeeded reason=Completed" in text
    finally:
        if gw.proc is not None:
            gw.proc.stop()


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run ``argv`` with its stdout on a pseudo-terminal (120 columns); its exit code and output."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode(errors="replace")


def test_tool_calls_and_results_are_panels_on_a_terminal_and_lines_in_a_pipe(
    bed: harness.Bed, operator: Any, gateway: Gateway, namespace: str, tmp_path: pathlib.Path
) -> None:
    from tests.worker import openai_server

    server = openai_server.OpenAIServer().start()
    try:
        bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=server.base_url)
        # Given a model that calls a tool the worker does not have (an error result), then `complete`
        long_query = "agentrun " * 30
        server.reply(
            openai_server.tool_reply(("call_1", "search", json.dumps({"q": long_query.strip(), "limit": 3})),
                                     text="Let me look."),
            openai_server.tool_reply(("call_2", "complete", json.dumps({"text": "All done."})), text="Found it."),
        )
        bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                    "metadata": {"name": "tools", "namespace": namespace},
                    "spec": {"input": "Find it", "agent": {"model": "openai/test-model"}}})
        bed.wait_phase(namespace, "tools", "Succeeded", "Failed", "Stopped", timeout=60)
        # When its logs are shown on a terminal, through the gateway
        code, screen = run_in_terminal([str(BIN / "agentrun"), "logs", "tools", "-n", namespace],
                                       remote_env(gateway))
        assert code == 0, screen
        text = re.sub(r"\x1b\[[0-9;]*m", "", screen)
        # Then the text streams, each call is a panel titled with the tool and its arguments summarised
        assert "Let me look." in text and "Found it." in text
        assert "╭─ ⚙ search" in text and "╭─ ⚙ complete" in text
        assert 'q="agentrun agentrun' in text and "limit=3" in text
        assert long_query.strip() not in text  # the long argument is cut short
        # And the error result is a red panel, the good one green, the end a status line with tokens
        assert "╭─ ✗ search" in text and "no tool named 'search'" in text
        assert "\x1b[1;31m✗ search" in screen and "\x1b[1;32m✓ complete" in screen
        assert "╭─ ✓ complete" in text and "All done." in text
        assert "● Succeeded reason=Completed iterations=2 tokens=50 (40 in, 10 out)" in text
        # When the same logs go to a pipe, straight from the cluster and Redis
        plain = subprocess.run([str(BIN / "agentrun"), "logs", "tools", "-n", namespace], env=bed.env(),
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0, plain.stderr
        # Then the renderer writes the same content as plain lines: no colour, no boxes
        lines = plain.stdout.splitlines()
        assert "\x1b[" not in plain.stdout and "╭" not in plain.stdout
        assert any(line.startswith('[tool] search q="agentrun agentrun') and line.endswith("limit=3")
                   for line in lines), lines
        assert any(line.startswith("[tool error] search: error: no tool named 'search'") for line in lines), lines
        assert '[tool] complete text="All done."' in lines
        assert "[tool result] complete: All done." in lines
        assert lines[-1] == "Succeeded reason=Completed iterations=2 tokens=50 (40 in, 10 out)"
    finally:
        server.stop()
