"""``python -m bench dispatch``: AgentRun created → actor started, against bare Dramatiq.

agentrun: the emulator (in this process), the operator (``kopf run``) and a worker
(``dramatiq``) as real processes on real RabbitMQ, Redis and PostgreSQL; for each of
``--runs`` AgentRuns, from just before the create call to the worker actor's first line
(``receivedAt`` in the run's first stream event). Baseline: a bare Dramatiq async actor in its
own worker process, from just before ``send()`` (publisher confirms on) to its first line.
Both paced the same way, in the same run; the ratio is what agentrun adds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import tempfile
import time
import uuid
from typing import Any

import redis

from agentrun import keys
from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ts(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def baseline(amqp_url: str, redis_url: str, runs: int, interval: float, log_dir: pathlib.Path) -> list[float]:
    import os

    from tests.e2e import harness

    r = redis.Redis.from_url(redis_url)
    r.delete("bench:{bare}:starts")
    env = dict(os.environ, BENCH_AMQP_URL=amqp_url, BENCH_REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    proc = harness.Proc("bare-worker", [str(harness.BIN / "dramatiq"), "bench.bare_actor", "--processes", "1",
                                        "--threads", "8"], env, log_dir).start()
    try:
        harness.wait_until(lambda: "ready for action" in proc.output(), 30, "the bare worker", 0.1)
        os.environ["BENCH_AMQP_URL"] = amqp_url
        from bench import bare_actor

        sent: dict[int, float] = {}
        for i in range(runs):
            sent[i] = time.time()
            bare_actor.touch.send(i)
            time.sleep(interval)
        harness.wait_until(lambda: r.llen("bench:{bare}:starts") >= runs, 60, "bare actors")
        starts = [json.loads(x) for x in r.lrange("bench:{bare}:starts", 0, -1)]
        bare_actor.broker.close()
        return [(s["t"] - sent[s["i"]]) * 1000 for s in starts]
    finally:
        proc.stop()
        r.delete("bench:{bare}:starts")


def agentrun(amqp_url: str, redis_url: str, database_url: str, runs: int, interval: float,
             log_dir: pathlib.Path) -> list[float]:
    import yaml
    from agentrun_local import emulator

    from agentrun import store
    from tests.e2e import harness

    asyncio.run(store.migrate_url(database_url))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    bed = harness.Bed(kubeconfig=server.write_kubeconfig(log_dir / "kubeconfig"), amqp_url=amqp_url,
                      redis_url=redis_url, database_url=database_url, log_dir=log_dir, emulator=server)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    queue = f"agentrun.{ns}.default"
    try:
        bed.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                    "metadata": {"name": "default", "namespace": ns}, "spec": {}})
        bed.start_operator()
        bed.start_worker(queue, threads=8, AGENTRUN_LOG_LEVEL="WARNING")
        created: dict[str, float] = {}
        for i in range(runs):
            name = f"run-{i}"
            created[name] = time.time()
            obj = bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                              "metadata": {"name": name, "namespace": ns},
                              "spec": {"input": "hi", "agent": {"model": "scripted", "script": [{"text": "ok"}]}}})
            created[obj["metadata"]["uid"]] = created.pop(name)
            time.sleep(interval)
        r = redis.Redis.from_url(redis_url)

        def first_events() -> dict[str, Any] | None:
            found = {}
            for uid in created:
                entries = r.xrange(keys.stream(uid), count=1)
                if not entries:
                    return None
                found[uid] = json.loads(entries[0][1][b"e"])
            return found

        firsts = harness.wait_until(first_events, 120, "every run to start", 0.2)
        return [(_ts(firsts[uid]["receivedAt"]) - created[uid]) * 1000 for uid in created]
    finally:
        bed.stop_all()
        server.stop()
        bed.delete_queues(queue)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dispatch")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=30.0, help="pause between creations")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/agentrun_bench")
    args = parser.parse_args(argv)
    _ensure_database(args.database_url)
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = pathlib.Path(tmp)
        bare = baseline(args.amqp_url, args.redis_url, args.runs, args.interval_ms / 1000, log_dir)
        ours = agentrun(args.amqp_url, args.redis_url, args.database_url, args.runs, args.interval_ms / 1000, log_dir)
    report.line(bench="dispatch", variant="bare-dramatiq", **report.summary(bare))
    report.line(bench="dispatch", variant="agentrun", **report.summary(ours))
    p50, p99 = report.percentile(ours, 50), report.percentile(ours, 99)
    b50, b99 = report.percentile(bare, 50), report.percentile(bare, 99)
    report.result("dispatch", runs=len(ours), p50_ms=round(p50, 2), p99_ms=round(p99, 2),
                  bare_p50_ms=round(b50, 2), bare_p99_ms=round(b99, 2),
                  ratio_p50=round(p50 / b50, 2), ratio_p99=round(p99 / b99, 2),
                  target_met=p50 <= 25 and p99 <= 100)
    return 0


def _ensure_database(url: str) -> None:
    import asyncpg

    base, name = url.rsplit("/", 1)

    async def create() -> None:
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
