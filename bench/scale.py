"""``python -m bench scale``: 10,000 AgentRuns created at once, the operator queues them all.

The operator (``kopf run``) runs as a real process against the Kubernetes API emulator (in a
process of its own) and real RabbitMQ with publisher confirms; no worker consumes the queue
("workers stubbed at the broker"), so what is measured is the operator: the time from the
first create until every run is ``Queued`` with its message confirmed (the queue depth, read
with a passive declare, reaches the count; a final list checks every phase), its throughput
and its peak RSS (``VmHWM``).

The baseline, measured in the same run on a fresh emulator, is the API work one dispatch
costs done by a plain client with no operator at all: per run one create, one GET and one
status PATCH, at the same creation concurrency. It is the ceiling this emulator allows on this
machine; the ratio says how close the operator comes to it. The operator also writes kopf's
progress annotations and an Event per run, which the baseline does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import httpx
import prometheus_client.parser

from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent

EMULATOR = """
import pathlib, sys, time, yaml
from agentrun_local import emulator
crds = [yaml.safe_load(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml"))]
server = emulator.EmulatorServer(crds=crds)
server.start()
server.write_kubeconfig(pathlib.Path(sys.argv[2]))
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def start_emulator(log_dir: pathlib.Path) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
    kubeconfig = log_dir / f"kubeconfig-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([sys.executable, "-c", EMULATOR, str(ROOT / "crds"), str(kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the emulator did not start")
    return proc, kubeconfig


def server_of(kubeconfig: pathlib.Path) -> str:
    import yaml

    return str(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


def run_body(namespace: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": f"run-{i:05d}", "namespace": namespace},
            "spec": {"input": "hi", "agent": {"model": "scripted", "script": [{"text": "ok"}]}}}


async def create_all(server: str, namespace: str, count: int, concurrency: int,
                     after_create: Any = None) -> float:
    """Create ``count`` AgentRuns with ``concurrency`` requests in flight; seconds taken."""
    url = f"{server}/apis/agentrun.io/v1alpha1/namespaces/{namespace}/agentruns"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def one() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                response = await client.post(url, json=run_body(namespace, i))
                response.raise_for_status()
                if after_create is not None:
                    await after_create(client, url, response.json())

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return time.perf_counter() - started


async def dispatch_like(client: httpx.AsyncClient, url: str, obj: dict[str, Any]) -> None:
    """What one dispatch costs the API server: GET the run, then a CAS status PATCH."""
    name = obj["metadata"]["name"]
    current = (await client.get(f"{url}/{name}")).json()
    patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
             "status": {"phase": "Queued", "attempt": 1, "queuedAt": "2026-01-01T00:00:00Z"}}
    response = await client.patch(f"{url}/{name}/status", content=json.dumps(patch),
                                  headers={"Content-Type": "application/merge-patch+json"})
    response.raise_for_status()


def create_namespace_and_pool(server: str, namespace: str) -> None:
    httpx.post(f"{server}/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": namespace}}).raise_for_status()
    httpx.post(f"{server}/apis/agentrun.io/v1alpha1/namespaces/{namespace}/workerpools",
               json={"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                     "metadata": {"name": "default", "namespace": namespace}, "spec": {}}).raise_for_status()


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a process, in MiB."""
    total = 0
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline(count: int, concurrency: int, log_dir: pathlib.Path) -> float:
    proc, kubeconfig = start_emulator(log_dir)
    try:
        server = server_of(kubeconfig)
        namespace = f"base-{uuid.uuid4().hex[:6]}"
        create_namespace_and_pool(server, namespace)
        return asyncio.run(create_all(server, namespace, count, concurrency, dispatch_like))
    finally:
        proc.kill()
        proc.wait()


def operator_run(count: int, concurrency: int, amqp_url: str, redis_url: str, database_url: str,
                 log_dir: pathlib.Path, profile: pathlib.Path | None = None) -> dict[str, Any]:
    from tests.e2e import harness

    proc, kubeconfig = start_emulator(log_dir)
    namespace = f"scale-{uuid.uuid4().hex[:6]}"
    queue = f"agentrun.{namespace}.default"
    bed = harness.Bed(kubeconfig=kubeconfig, amqp_url=amqp_url, redis_url=redis_url, database_url=database_url,
                      log_dir=log_dir, emulator=None)
    try:
        server = server_of(kubeconfig)
        create_namespace_and_pool(server, namespace)
        # no worker exists by design, so the lost-message re-publish must not fire meanwhile
        operator = bed.start_operator(AGENTRUN_LOG_LEVEL="WARNING", AGENTRUN_QUEUED_TIMEOUT_SECONDS="86400")
        assert operator.popen is not None
        idle_rss = peak_rss_mib(operator.popen.pid)
        spy = None
        if profile is not None:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(operator.popen.pid), "-o", str(profile), "-f", "raw",
                                    "-r", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_before = (cpu_seconds(operator.popen.pid), cpu_seconds(proc.pid))
        started = time.perf_counter()
        created_in = asyncio.run(create_all(server, namespace, count, concurrency))

        def all_queued() -> bool:
            # the operator's own gauge: every run Queued in its index (read on scrape)
            text = httpx.get(operator.metrics_url, timeout=10).text
            for family in prometheus_client.parser.text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "agentrun_runs" and sample.labels.get("namespace") == namespace \
                            and sample.labels.get("phase") == "Queued":
                        return sample.value >= count
            return False

        harness.wait_until(all_queued, 1800, f"{count} runs Queued", 0.25)
        harness.wait_until(lambda: bed.queue_depth(queue) >= count, 120, f"{count} messages", 0.25)
        queued_in = time.perf_counter() - started
        cpu = (cpu_seconds(operator.popen.pid) - cpu_before[0], cpu_seconds(proc.pid) - cpu_before[1])
        if spy is not None:
            spy.send_signal(2)
            spy.wait()
        rss = peak_rss_mib(operator.popen.pid)
        items = httpx.get(f"{server}/apis/agentrun.io/v1alpha1/namespaces/{namespace}/agentruns",
                          timeout=120).json()["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        return {"created_s": created_in, "queued_s": queued_in, "rss_mib": rss, "idle_rss_mib": idle_rss,
                "operator_cpu_s": cpu[0], "emulator_cpu_s": cpu[1],
                "queued": phases.count("Queued"), "objects": len(items), "depth": bed.queue_depth(queue)}
    finally:
        bed.stop_all()
        proc.kill()
        proc.wait()
        bed.delete_queues(queue)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32, help="creations in flight")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/agentrun_bench")
    parser.add_argument("--profile", type=pathlib.Path, default=None,
                        help="write a py-spy profile (raw folded stacks) of the operator here")
    args = parser.parse_args(argv)
    from bench.dispatch import _ensure_database

    _ensure_database(args.database_url)
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = pathlib.Path(tmp)
        base_s = baseline(args.runs, args.concurrency, log_dir)
        ours = operator_run(args.runs, args.concurrency, args.amqp_url, args.redis_url, args.database_url, log_dir,
                            args.profile)
    throughput = args.runs / ours["queued_s"]
    ceiling = args.runs / base_s
    report.line(bench="scale", variant="emulator-ceiling", runs=args.runs, seconds=round(base_s, 2),
                runs_per_s=round(ceiling, 1))
    report.line(bench="scale", variant="operator", runs=args.runs, create_seconds=round(ours["created_s"], 2),
                all_queued_seconds=round(ours["queued_s"], 2), runs_per_s=round(throughput, 1),
                peak_rss_mib=round(ours["rss_mib"], 1), idle_rss_mib=round(ours["idle_rss_mib"], 1),
                queued=ours["queued"], objects=ours["objects"], messages=ours["depth"],
                operator_cpu_s=round(ours["operator_cpu_s"], 1), emulator_cpu_s=round(ours["emulator_cpu_s"], 1),
                operator_cpu_share=round(ours["operator_cpu_s"] / ours["queued_s"], 2),
                emulator_cpu_share=round(ours["emulator_cpu_s"] / ours["queued_s"], 2))
    report.result("scale", runs=args.runs, runs_per_s=round(throughput, 1), ceiling_runs_per_s=round(ceiling, 1),
                  ratio=round(throughput / ceiling, 2), peak_rss_mib=round(ours["rss_mib"], 1),
                  all_queued=ours["queued"] == args.runs, messages=ours["depth"],
                  target_met=throughput >= 100 and ours["rss_mib"] < 500)
    return 0
