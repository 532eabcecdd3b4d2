"""``python -m bench stop``: stop request → terminal stream event, with a model streaming tokens
and with a tool running.

For each of ``--runs`` runs, the worker's own ``execution.Execution`` executes an AgentRun
in this process against real Redis and PostgreSQL and the API-server emulator (no broker:
the message is handed to the execution directly, so only the stop path is measured). The
scripted model streams a token every ``--chunk-ms``; once a few tokens are on the stream,
``agentrun.control.request_stop`` is called (durable flag + pub/sub publish, as the operator
does), and a reader blocked on the stream (``streams.follow``, as ``agentrun logs -f``)
timestamps the terminal ``stopped`` event. The latency covers: the pub/sub wake-up, the
cancellation of the model stream, the flush of the events, the database write, the
compare-and-swap of the resource's status and the terminal ``XADD`` reaching the reader.
Reader and worker share one event loop here; in production they are different processes.

Variant ``tool-running``: the agent runs on the OpenAI-compatible provider against the test
suite's local Chat Completions server (``tests/worker/openai_server.py``), whose reply calls a
tool that never returns; the stop is requested as soon as the ``tool_call`` event is on the
stream, so the latency includes cancelling the running tool.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import tempfile
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from agentrun import control, kube, message, settings, store, streams
from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent


async def one_run(clients: Any, config: settings.Settings, api: Any, ns: str, index: int, chunk_ms: int,
                  reader: aioredis.Redis, variant: str = "model-streaming") -> float:
    import lightkube.codecs
    from agentrun_worker import execution

    name = f"{variant}-{index}" if index >= 0 else f"warm-{variant}-{-index}"
    if variant == "tool-running":
        trigger, needed = streams.TOOL_CALL, 1
        agent: dict[str, Any] = {"model": "openai/bench", "tools": ["sleep"]}
    else:
        trigger, needed = streams.ASSISTANT, 5
        agent = {"model": "scripted", "script": [{"text": " ".join(f"t{i}" for i in range(2000)),
                                                  "chunkDelayMs": chunk_ms}]}
    spec = {"input": "hi", "agent": agent, "workerPool": "default"}
    obj = kube.to_dict(await api.create(lightkube.codecs.from_dict({
        "apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})))
    uid = obj["metadata"]["uid"]
    msg = message.RunMessage(uid=uid, namespace=ns, name=name, generation=1, attempt=1, thread_id=uid,
                             queued_at=kube.now_precise(), spec=obj["spec"])
    run = asyncio.get_running_loop().create_task(
        execution.Execution(msg, clients, config, received_at=kube.now_precise()).run())
    seen = 0
    requested_at = 0.0
    async for _, event in streams.follow(reader, uid, block_ms=1_000):
        if event["type"] == trigger:
            seen += 1
            if seen == needed:
                requested_at = time.perf_counter()
                await control.request_stop(reader, uid, reason="StopRequested")
        elif streams.is_terminal(event):
            latency = (time.perf_counter() - requested_at) * 1000
            if event["status"] != "stopped":
                raise RuntimeError(f"run {name} ended {event['status']}, not stopped: {event}")
            await run
            return latency
    raise RuntimeError(f"run {name}: the stream ended without a terminal event")


async def _sleep_forever(args: dict[str, Any]) -> str:
    await asyncio.Event().wait()
    return "never"


async def measure(redis_url: str, database_url: str, runs: int, chunk_ms: int, state: pathlib.Path
                  ) -> dict[str, list[float]]:
    import lightkube.codecs
    import yaml
    from agentrun_local import emulator
    from agentrun_worker import providers, runtime, tools

    from tests.worker import openai_server

    model = openai_server.OpenAIServer().start()
    os.environ.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=model.base_url)
    tools.AVAILABLE["sleep"] = tools.Tool("sleep", "Never returns.", {"type": "object"}, _sleep_forever)
    await store.migrate_url(database_url)
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    kubeconfig = server.write_kubeconfig(state / "kubeconfig")
    config = settings.Settings(redis_url=redis_url, database_url=database_url, log_level="WARNING")
    db = store.open_store(database_url, default_sqlite_path=str(state / "unused.db"))
    await db.connect()
    clients = runtime.Clients(redis=aioredis.Redis.from_url(redis_url), api=kube.client(str(kubeconfig)), store=db)
    reader = aioredis.Redis.from_url(redis_url)
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        await clients.api.create(lightkube.codecs.from_dict(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        results: dict[str, list[float]] = {"model-streaming": [], "tool-running": []}
        for i in range(-3, runs):  # 3 warm-up rounds: connections, the emulator, the model client
            for variant, latencies in results.items():
                if variant == "tool-running":
                    model.reply(openai_server.tool_reply(("call_sleep", "sleep", "{}")))
                latency = await one_run(clients, config, clients.api, ns, i, chunk_ms, reader, variant)
                if i >= 0:
                    latencies.append(latency)
                    report.line(bench="stop", variant=variant, run=i, latency_ms=round(latency, 3))
        return results
    finally:
        await providers.close()
        model.stop()
        await reader.aclose()
        await clients.redis.aclose()
        await clients.api.close()
        await db.close()
        server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stop")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--chunk-ms", type=int, default=5, help="pause between streamed model tokens")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/agentrun_bench")
    args = parser.parse_args(argv)
    from agentrun import log
    from bench import dispatch

    log.configure("WARNING", "console")
    dispatch._ensure_database(args.database_url)
    with tempfile.TemporaryDirectory() as tmp:
        latencies = asyncio.run(measure(args.redis_url, args.database_url, args.runs, args.chunk_ms,
                                        pathlib.Path(tmp)))
    for variant, values in latencies.items():
        report.line(bench="stop", variant=variant, **report.summary(values))
    both = [v for values in latencies.values() for v in values]
    p50, p99 = report.percentile(both, 50), report.percentile(both, 99)
    tool = latencies["tool-running"]
    report.result("stop", runs=len(both), p50_ms=round(p50, 2), p99_ms=round(p99, 2),
                  tool_p50_ms=round(report.percentile(tool, 50), 2), tool_p99_ms=round(report.percentile(tool, 99), 2),
                  target_met=p99 <= 250)
    return 0
