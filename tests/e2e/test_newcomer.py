"""What a newcomer does on a fresh clone, as one test: ``agentrun dev`` with its embedded
defaults (a subprocess), every example applied by the real kubectl v1.33, every run reaching
a terminal phase, the pools showing the workers dev runs, the hints dev prints working, and
the operator's metrics endpoint answering.

No network: an example that needs a real model says so in its first comment and has an
offline twin; under dev it still ends (``Failed``, saying why), never stays ``Queued``.
``examples/cluster/`` is the throwaway infrastructure of a kind cluster (RabbitMQ, Redis,
PostgreSQL, Helm values), not runs: it is not applied here.

Everything is its own: ports from the OS, state and kube cache in the test's temp dir, a
PATH without the virtualenv (as when it is not activated), so it runs beside other tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import prometheus_client.parser
import pytest
import yaml

from agentrun import binaries
from tests.e2e import harness

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TERMINAL = {"Succeeded", "Failed", "Stopped"}
BOUND_SECONDS = 30
"""Every example's run ends within this after it is applied (the slowest streams ~3 s)."""


def first_comment(path: pathlib.Path) -> str:
    return path.read_text().splitlines()[0]


def needs_a_real_model(path: pathlib.Path) -> bool:
    return "needs a real model" in first_comment(path).lower()


def runs_of(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "AgentRun"]


def test_every_example_that_needs_a_real_model_says_so_and_has_an_offline_twin() -> None:
    for path in EXAMPLES:
        for run in runs_of(path):
            model = (run["spec"].get("agent") or {}).get("model", "scripted")
            if model != "scripted":
                assert needs_a_real_model(path), f"{path.name}: {first_comment(path)}"
                twin = re.search(r"offline twin: (\S+\.yaml)", path.read_text())
                assert twin and (ROOT / "examples" / twin.group(1)).exists(), path.name


def test_a_newcomer_runs_every_example_under_agentrun_dev(tmp_path: pathlib.Path) -> None:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_") and k != "KUBECONFIG"}
    metrics_port = harness.free_port()
    env.update(KUBECACHEDIR=str(tmp_path / "kubecache"), PYTHONUNBUFFERED="1", COLUMNS="300",
               AGENTRUN_METRICS_PORT=str(metrics_port),
               # the virtualenv not activated: its bin dir is not on PATH
               PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if pathlib.Path(p) != BIN),
               AGENTRUN_TOKEN="a-token-from-another-project")  # exported for something else: dev ignores it
    api_port, redis_port, gateway_port = harness.free_port(), harness.free_port(), harness.free_port()
    # dev's defaults: its state under the current directory (.agentrun), as a fresh clone has it
    dev = harness.Proc("dev", [str(BIN / "agentrun"), "dev", "--api-port", str(api_port), "--redis-port",
                               str(redis_port), "--gateway-port", str(gateway_port)], env, tmp_path)
    dev.popen = subprocess.Popen(dev.argv, env=env, cwd=tmp_path, stdout=open(dev.log_path, "wb"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        harness.wait_until(lambda: "Ctrl-C stops everything" in dev.output() or not dev.alive(), 60,
                           "agentrun dev", 0.1)
        assert dev.alive(), dev.output()
        printed = dev.output()
        exports = re.search(r"export (KUBECONFIG=\S+) (AGENTRUN_REDIS_URL=\S+)", printed)
        assert exports, printed
        env.update(dict(pair.split("=", 1) for pair in exports.groups()))
        # dev points at the kubectl v1.33 the README names, not whatever is on PATH
        kubectl = str(binaries.kubectl())
        assert f"{kubectl} apply -f" in printed, printed

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)

        # When every example is applied, as the README and the examples' comments say
        for path in EXAMPLES:
            applied = run(kubectl, "apply", "-f", str(path))
            assert applied.returncode == 0, f"{path.name}: {applied.stderr}"
        expected = {r["metadata"]["name"]: path for path in EXAMPLES for r in runs_of(path)}
        assert len(expected) >= 4

        # Then every run ends, within the bound
        def phases() -> dict[str, str]:
            listed = json.loads(run(kubectl, "get", "ar", "-o", "json").stdout)
            return {o["metadata"]["name"]: (o.get("status") or {}).get("phase", "") for o in listed["items"]}

        deadline = time.monotonic() + BOUND_SECONDS
        while time.monotonic() < deadline and not all(phases().get(n) in TERMINAL for n in expected):
            time.sleep(0.3)
        final = phases()
        assert all(final.get(n) in TERMINAL for n in expected), f"{final}\n{dev.output()[-6000:]}"
        # And every offline example succeeds; one needing a real model fails saying why
        for name, path in expected.items():
            if needs_a_real_model(path):
                assert final[name] == "Failed", final
            else:
                assert final[name] == "Succeeded", (name, final, dev.output()[-6000:])
        offline_tools = [n for n, p in expected.items() if "mcp" in p.name and not needs_a_real_model(p)]
        assert offline_tools, "an offline MCP example"
        for name in offline_tools:
            logs = run(str(BIN / "agentrun"), "logs", name)
            assert logs.returncode == 0 and "[tool result]" in logs.stdout, logs.stdout + logs.stderr
            # the pool's env reached its MCP server (envFrom), and the server was found in the
            # virtualenv's bin dir though it is not on PATH
            assert "Hello from the local-tools pool!" in logs.stdout, logs.stdout
            assert "in Asia/Tokyo" in logs.stdout, logs.stdout

        # And kubectl get wp shows the one worker dev runs for each pool
        def ready() -> dict[str, Any]:
            pools = json.loads(run(kubectl, "get", "wp", "-o", "json").stdout)["items"]
            return {p["metadata"]["name"]: (p.get("status") or {}).get("readyReplicas") for p in pools}

        harness.wait_until(lambda: set(ready().values()) == {1}, 15, f"every pool READY 1: {ready()}", 0.2)

        # And the commands dev prints work as printed, though the virtualenv is not activated
        hint = re.search(r"^\s+(\S*agentrun \S+ --gateway \S+)", printed, re.M)
        assert hint, printed
        command = shlex.split(hint.group(1))
        assert command[0] == str(BIN / "agentrun"), printed  # not on PATH: dev prints its full path
        through_gateway = run(*command)
        # with AGENTRUN_TOKEN exported for something else: dev's gateway has no auth and ignores it
        assert through_gateway.returncode == 0, (command, through_gateway.stdout, through_gateway.stderr)

        # And the operator's metrics endpoint answers
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "agentrun_runs_finished_total" in scraped and "agentrun_pool_ready_replicas" in scraped
        # And so does the workers' endpoint dev prints, counting the runs they finished
        worker_metrics = re.search(r"^Worker metrics: (\S+)$", printed, re.M)
        assert worker_metrics, printed
        families = {f.name: f for f in prometheus_client.parser.text_string_to_metric_families(
            httpx.get(worker_metrics.group(1), timeout=5).text)}
        finished = {(s.labels["phase"], s.labels["queue_name"]): s.value
                    for s in families["agentrun_worker_runs_finished"].samples if s.name.endswith("_total")}
        assert finished.get(("Succeeded", "agentrun.default.default"), 0) >= 1, finished
        assert "dramatiq_messages" in families, sorted(families)
    finally:
        if dev.alive():
            assert dev.popen is not None
            dev.popen.send_signal(signal.SIGINT)
            try:
                dev.popen.wait(20)
            except subprocess.TimeoutExpired:
                dev.kill()
    assert dev.popen.returncode == 0, dev.output()[-3000:]
    assert time.monotonic() - started < 60, "the newcomer test should take well under a minute"
