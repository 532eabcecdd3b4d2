"""``python -m bench autoscale``: backlog appears → the pool's Deployment has new replicas.

The emulator (in this process), the operator (``kopf run``, default settings: one autoscaler
pass a second) and real RabbitMQ, Redis and PostgreSQL; no worker, so the backlog stays. A pool
of 0 to 50 replicas and one run per replica starts idle at zero. Each round creates a burst of
AgentRuns and measures the time from the first create to the Deployment's ``spec.replicas``
reaching the burst size (read straight from the emulator's store every millisecond), then
deletes the runs and waits for zero again (a stabilization window of 0 s, so rounds are short).

Baseline, same run, same operator: the time from the same create to the first run's ``Queued``
(the operator's own dispatch path) — the soonest the operator can know of the backlog. The
difference is what the autoscaler adds; the target is ≤ 2 s in total (KEDA's defaults react in
30–45 s: a 30 s polling interval plus the HPA's sync period).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import pathlib
import tempfile
import time
import uuid
from typing import Any

from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench autoscale")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=5, help="runs created per round")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/agentrun_bench")
    args = parser.parse_args(argv)
    import yaml
    from agentrun_local import emulator

    from agentrun import kube, store
    from bench.dispatch import _ensure_database
    from tests.e2e import harness

    _ensure_database(args.database_url)
    asyncio.run(store.migrate_url(args.database_url))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    ns = f"autoscale-{uuid.uuid4().hex[:6]}"
    scale_up: list[float] = []
    queued: list[float] = []
    scale_down: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = pathlib.Path(tmp)
        bed = harness.Bed(kubeconfig=server.write_kubeconfig(log_dir / "kubeconfig"), amqp_url=args.amqp_url,
                          redis_url=args.redis_url, database_url=args.database_url, log_dir=log_dir, emulator=server)
        try:
            bed.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                        "metadata": {"name": "default", "namespace": ns},
                        "spec": {"minReplicas": 0, "maxReplicas": 50, "runsPerReplica": 1,
                                 "scaleDownStabilizationSeconds": 0}})
            bed.start_operator(AGENTRUN_LOG_LEVEL="WARNING")

            def replicas() -> int:
                found = server.get("apps/v1", "deployments", ns, "default-workers")
                return -1 if found is None else int(found["spec"].get("replicas", -1))

            def phase(name: str) -> str | None:
                found = server.get("agentrun.io/v1alpha1", "agentruns", ns, name)
                return None if found is None else (found.get("status") or {}).get("phase")

            harness.wait_until(lambda: replicas() == 0, 30, "the idle pool at zero", 0.01)
            for round_ in range(args.rounds):
                names = [f"r{round_}-{i}" for i in range(args.burst)]
                started = time.perf_counter()
                for name in names:
                    bed.create(_run(ns, name))
                first_queued: float | None = None
                while replicas() < args.burst:
                    if first_queued is None and phase(names[0]) == "Queued":
                        first_queued = time.perf_counter() - started
                    time.sleep(0.001)
                    if time.perf_counter() - started > 60:
                        raise RuntimeError(f"round {round_}: the pool did not scale up within 60 s")
                scale_up.append((time.perf_counter() - started) * 1000)
                if first_queued is None:
                    harness.wait_until(functools.partial(lambda n: phase(n) == "Queued", names[0]), 30,
                                       "the first run queued", 0.001)
                    first_queued = time.perf_counter() - started
                queued.append(first_queued * 1000)
                drained = time.perf_counter()
                for name in names:
                    bed.api.delete(kube.AgentRun, name, namespace=ns)
                harness.wait_until(lambda: replicas() == 0, 60, "the pool back to zero", 0.001)
                scale_down.append((time.perf_counter() - drained) * 1000)
        finally:
            bed.stop_all()
            server.stop()
            bed.delete_queues(f"agentrun.{ns}.default")
    report.line(bench="autoscale", variant="first-run-queued", **report.summary(queued))
    report.line(bench="autoscale", variant="replicas-updated", **report.summary(scale_up))
    report.line(bench="autoscale", variant="scaled-to-zero-after-drain", **report.summary(scale_down))
    p50, p99 = report.percentile(scale_up, 50), report.percentile(scale_up, 99)
    report.result("autoscale", rounds=args.rounds, burst=args.burst, p50_ms=round(p50, 1), p99_ms=round(p99, 1),
                  queued_p50_ms=round(report.percentile(queued, 50), 1),
                  added_p50_ms=round(p50 - report.percentile(queued, 50), 1),
                  down_p50_ms=round(report.percentile(scale_down, 50), 1), target_met=p99 <= 2000)
    return 0


def _run(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"input": "hi", "agent": {"model": "scripted", "script": [{"text": "ok"}]}}}
