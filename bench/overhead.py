"""``python -m bench overhead``: a trivial run through the whole worker, against bare Dramatiq.

Per-run wall time, from just before the message is published (publisher confirms on) until
a reader blocked on the run's Redis stream (``XREAD BLOCK``) has the terminal event. The
work is trivial: the scripted model's one short reply, streamed chunk by chunk.

- **bare**: a bare Dramatiq async actor (``bench.bare_actor.stream_reply``, its own
  ``dramatiq`` process) writes the same events to a stream in one pipelined round trip;
- **agentrun**: a real worker process (``dramatiq agentrun_worker.actors``) runs the whole
  lifecycle: admission (database row, lease, resource), ``Running`` in the database and on
  the AgentRun (the API emulator), the agent loop, the final state, key TTLs;
- **agentrun+otel**: a second worker process exporting OpenTelemetry spans over OTLP/HTTP
  (batched) to a local receiver: what tracing adds.

The three are interleaved run by run, on the same RabbitMQ, Redis and PostgreSQL, so that
the machine's noise falls on all of them. Then **where the time goes**: the same execution
(``execution.Execution``) runs in this process with every database, resource-API and Redis
call timed by kind (lease, stop flag/pub-sub, stream, database, AgentRun API). The stream's
writes overlap the rest (the writer flushes in the background), so the parts may sum to
more than the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import json
import os
import pathlib
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from agentrun import keys, kube, message, settings, store
from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPLY = "Hello! This is the short scripted reply of a trivial run."
VARIANTS = ("bare", "agentrun", "agentrun+otel")


def _chunks() -> list[str]:
    from agentrun_worker.providers import scripted

    return list(scripted._CHUNKS.findall(REPLY))


def _spec() -> dict[str, Any]:
    return {"input": "hi", "agent": {"model": "scripted", "script": [{"text": REPLY}]}}


def _until_terminal(r: redis.Redis, key: str, timeout_ms: int = 30_000,
                    first: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Block on the stream until its terminal event; the first event goes into ``first``."""
    last = "0-0"
    while True:
        found = r.xread({key: last}, block=timeout_ms)
        if not found:
            raise RuntimeError(f"no terminal event on {key} within {timeout_ms} ms")
        for _, entries in found:
            for entry_id, fields in entries:
                last = entry_id
                event = json.loads(fields[b"e"])
                if first is not None and not first:
                    first.append(event)
                if event.get("type") == "status" and event.get("status") in ("succeeded", "failed", "stopped"):
                    return event  # type: ignore[no-any-return]


def measure(amqp_url: str, redis_url: str, database_url: str, runs: int, warmup: int, log_dir: pathlib.Path,
            server: Any, kubeconfig: pathlib.Path, ns: str) -> dict[str, list[float]]:
    from agentrun import broker as brokers
    from bench import dispatch
    from tests.e2e import harness
    from tests.worker import tracing_receiver

    bed = harness.Bed(kubeconfig=kubeconfig, amqp_url=amqp_url, redis_url=redis_url, database_url=database_url,
                      log_dir=log_dir, emulator=server)
    receiver = tracing_receiver.Receiver().start()
    queues = {"agentrun": f"agentrun.{ns}.plain", "agentrun+otel": f"agentrun.{ns}.traced"}
    r = redis.Redis.from_url(redis_url)
    os.environ["BENCH_AMQP_URL"] = amqp_url
    os.environ["BENCH_REDIS_URL"] = redis_url
    from bench import bare_actor

    rabbit = brokers.make_broker(settings.Settings(broker_url=amqp_url))
    bare_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    bare = harness.Proc("bare-worker", [str(harness.BIN / "dramatiq"), "bench.bare_actor", "--processes", "1",
                                        "--threads", "8", "--queues", bare_actor.STREAM_QUEUE], bare_env, log_dir)
    try:
        bare.start()
        harness.wait_until(lambda: "ready for action" in bare.output(), 30, "the bare worker", 0.1)
        bed.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        bed.start_worker(queues["agentrun"], threads=8, AGENTRUN_LOG_LEVEL="WARNING")
        bed.start_worker(queues["agentrun+otel"], threads=8, AGENTRUN_LOG_LEVEL="WARNING",
                         OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="agentrun-bench")
        chunks = _chunks()
        results: dict[str, list[float]] = collections.defaultdict(list)

        def bare_run(i: int) -> float:
            key = f"bench:{{{uuid.uuid4().hex}}}:stream"
            started = time.perf_counter()
            bare_actor.stream_reply.send(key, chunks)
            _until_terminal(r, key)
            elapsed = time.perf_counter() - started
            r.delete(key)
            return elapsed

        def agentrun_run(variant: str, i: int) -> float:
            name = f"{variant.replace('+', '-')}-{i}".replace("--", "-warm-")
            obj = bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                              "metadata": {"name": name, "namespace": ns}, "spec": _spec()})
            uid = obj["metadata"]["uid"]
            msg = message.RunMessage(uid=uid, namespace=ns, name=name, generation=1, attempt=1, thread_id=uid,
                                     queued_at=kube.now_precise(), spec=obj["spec"])
            first: list[dict[str, Any]] = []
            wall_start = time.time()
            started = time.perf_counter()
            brokers.enqueue(rabbit, msg, queues[variant])
            event = _until_terminal(r, keys.stream(uid), first=first)
            elapsed = time.perf_counter() - started
            if event["status"] != "succeeded":
                raise RuntimeError(f"run {name} ended {event}")
            if i >= 0:  # publish → the actor's first line (its receivedAt), and the rest of the run
                dispatch_ms = (dispatch._ts(first[0]["receivedAt"]) - wall_start) * 1000
                results[f"{variant}: publish -> actor start"].append(dispatch_ms)
                results[f"{variant}: actor start -> terminal event read"].append(elapsed * 1000 - dispatch_ms)
            return elapsed

        measures: dict[str, Callable[[int], float]] = {
            "bare": bare_run,
            "agentrun": lambda i: agentrun_run("agentrun", i),
            "agentrun+otel": lambda i: agentrun_run("agentrun+otel", i),
        }
        for i in range(-warmup, runs):
            for variant in VARIANTS:
                elapsed_ms = measures[variant](i) * 1000
                if i >= 0:
                    results[variant].append(elapsed_ms)
        spans = harness.wait_until(lambda: receiver.spans("/v1/traces"), 30, "the traced worker's spans")
        if not any(s["name"].startswith("invoke_agent") for s in spans):
            raise RuntimeError("the traced worker exported no invoke_agent span: tracing was not on")
        return dict(results)
    finally:
        bed.stop_all()
        bare.stop()
        rabbit.close()
        bare_actor.broker.close()
        bed.delete_queues(*queues.values())
        receiver.stop()
        r.close()


# -- where the time goes -----------------------------------------------------------------------------


class _Timed:
    """Times every coroutine method of ``target`` into ``sink[category]``."""

    def __init__(self, target: Any, category: str, sink: dict[str, float]) -> None:
        self._target, self._category, self._sink = target, category, sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                self._sink[self._category] += time.perf_counter() - started
                self._sink[f"{self._category} calls"] += 1

        return timed


def _redis_category(args: list[Any]) -> str:
    text = " ".join(a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in args)
    for marker, category in ((":stream", "stream (Redis)"), (":lease", "lease (Redis)"),
                             (":stop", "stop flag + pub/sub (Redis)"), (":control", "stop flag + pub/sub (Redis)")):
        if marker in text:
            return category
    return "other Redis"


def _time_redis(sink: dict[str, float]) -> Callable[[], None]:
    """Time every Redis round trip of this process by the key it touches; returns the undo."""
    from redis.asyncio import client

    originals = (client.Redis.execute_command, client.Pipeline.execute, client.Pipeline.immediate_execute_command,
                 client.PubSub.execute_command)

    def wrap(original: Any, category_of: Callable[[Any, tuple[Any, ...]], str]) -> Any:
        async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            category = category_of(self, args)  # before the call: a pipeline's stack is reset by it
            started = time.perf_counter()
            try:
                return await original(self, *args, **kwargs)
            finally:
                sink[category] += time.perf_counter() - started
                sink[f"{category} calls"] += 1

        return timed

    client.Redis.execute_command = wrap(originals[0], lambda s, a: _redis_category(list(a)))  # type: ignore[method-assign]
    client.Pipeline.execute = wrap(  # type: ignore[method-assign]
        originals[1], lambda s, a: _redis_category([x for cmd in s.command_stack for x in cmd[0]]))
    client.Pipeline.immediate_execute_command = wrap(  # type: ignore[method-assign]
        originals[2], lambda s, a: _redis_category(list(a)))
    client.PubSub.execute_command = wrap(originals[3], lambda s, a: "stop flag + pub/sub (Redis)")  # type: ignore[method-assign]

    def undo() -> None:
        (client.Redis.execute_command, client.Pipeline.execute, client.Pipeline.immediate_execute_command,
         client.PubSub.execute_command) = originals  # type: ignore[method-assign]

    return undo


async def breakdown(redis_url: str, database_url: str, kubeconfig: pathlib.Path, ns: str, runs: int,
                    warmup: int, state: pathlib.Path) -> tuple[list[float], dict[str, list[float]]]:
    """Per run: the execution's wall time, and the time in each kind of call (ms)."""
    import lightkube.codecs
    import redis.asyncio as aioredis
    from agentrun_worker import execution, runtime

    config = settings.Settings(redis_url=redis_url, database_url=database_url, log_level="WARNING")
    db = store.open_store(database_url, default_sqlite_path=str(state / "unused.db"))
    await db.connect()
    api = kube.client(str(kubeconfig))
    sink: dict[str, float] = collections.defaultdict(float)
    clients = runtime.Clients(redis=aioredis.Redis.from_url(redis_url), api=_Timed(api, "AgentRun API", sink),
                              store=_Timed(db, "database", sink))
    undo = _time_redis(sink)
    walls: list[float] = []
    parts: dict[str, list[float]] = collections.defaultdict(list)
    try:
        for i in range(-warmup, runs):
            name = f"inproc-{i}".replace("--", "-warm-")
            obj = kube.to_dict(await api.create(lightkube.codecs.from_dict({
                "apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": name, "namespace": ns}, "spec": _spec()})))
            uid = obj["metadata"]["uid"]
            msg = message.RunMessage(uid=uid, namespace=ns, name=name, generation=1, attempt=1, thread_id=uid,
                                     queued_at=kube.now_precise(), spec=obj["spec"])
            sink.clear()
            started = time.perf_counter()
            run = execution.Execution(msg, clients, config, received_at=kube.now_precise())
            await run.run()
            elapsed = (time.perf_counter() - started) * 1000
            if i >= 0:
                walls.append(elapsed)
                for category in ("lease (Redis)", "stop flag + pub/sub (Redis)", "stream (Redis)", "other Redis",
                                 "database", "AgentRun API"):
                    parts[category].append(sink.get(category, 0.0) * 1000)
                    parts[f"{category} calls"].append(sink.get(f"{category} calls", 0.0))
        return walls, parts
    finally:
        undo()
        await clients.redis.aclose()
        await api.close()
        await db.close()


def _breakdown_in_child(args: argparse.Namespace, kubeconfig: pathlib.Path, ns: str
                        ) -> tuple[list[float], dict[str, list[float]]]:
    """Run :func:`breakdown` in a child process: in this one the emulator's server thread
    would compete with the execution for the interpreter lock, as it never does in a worker."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "bench", "overhead", "--breakdown-child", str(kubeconfig), ns,
         "--breakdown-runs", str(args.breakdown_runs), "--warmup", str(args.warmup),
         "--redis-url", args.redis_url, "--database-url", args.database_url],
        check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["walls"], data["parts"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench overhead")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--breakdown-runs", type=int, default=100)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/agentrun_bench")
    parser.add_argument("--breakdown-child", nargs=2, metavar=("KUBECONFIG", "NAMESPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from agentrun import log
    from bench import dispatch

    log.configure("WARNING", "console")
    if args.breakdown_child:  # the breakdown, in a process of its own (see _breakdown_in_child)
        with tempfile.TemporaryDirectory() as tmp:
            walls, parts = asyncio.run(breakdown(args.redis_url, args.database_url,
                                                 pathlib.Path(args.breakdown_child[0]), args.breakdown_child[1],
                                                 args.breakdown_runs, args.warmup, pathlib.Path(tmp)))
        print(json.dumps({"walls": walls, "parts": parts}))
        return 0
    dispatch._ensure_database(args.database_url)
    asyncio.run(store.migrate_url(args.database_url))
    import yaml
    from agentrun_local import emulator

    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state = pathlib.Path(tmp)
            kubeconfig = server.write_kubeconfig(state / "kubeconfig")
            results = measure(args.amqp_url, args.redis_url, args.database_url, args.runs, args.warmup, state,
                              server, kubeconfig, ns)
            walls, parts = _breakdown_in_child(args, kubeconfig, ns)
    finally:
        server.stop()
    for variant, values in results.items():
        report.line(bench="overhead", variant=variant, **report.summary(values))
    report.line(bench="overhead", variant="in-process execution", **report.summary(walls))
    for category, values in parts.items():
        if category.endswith(" calls"):
            report.line(bench="overhead", part=category, per_run=round(sum(values) / max(1, len(values)), 2))
        else:
            report.line(bench="overhead", part=category, **report.summary(values))
    p50 = {v: report.percentile(results[v], 50) for v in VARIANTS}
    p99 = {v: report.percentile(results[v], 99) for v in VARIANTS}
    report.result("overhead", runs=len(results["bare"]),
                  bare_p50_ms=round(p50["bare"], 2), bare_p99_ms=round(p99["bare"], 2),
                  agentrun_p50_ms=round(p50["agentrun"], 2), agentrun_p99_ms=round(p99["agentrun"], 2),
                  otel_p50_ms=round(p50["agentrun+otel"], 2), otel_p99_ms=round(p99["agentrun+otel"], 2),
                  ratio_p50=round(p50["agentrun"] / p50["bare"], 2), ratio_p99=round(p99["agentrun"] / p99["bare"], 2),
                  tracing_ratio_p50=round(p50["agentrun+otel"] / p50["agentrun"], 3),
                  inprocess_p50_ms=round(report.percentile(walls, 50), 2))
    return 0
