"""``python -m bench gateway_validation``: ``/healthz`` latency while 256 KiB bodies are checked.

A gateway process (``python -m agentrun_gateway.app``: uvicorn, the API emulator, real Redis)
is probed with ``GET /healthz`` every ``--interval-ms``, first idle, then while ``--posters``
clients post create-run bodies of 256 KiB in a loop. Each body is the costliest kind found: a
script of 1,000 steps (the CRD's maximum) of text and six tool calls each, whose CEL rules
all run (≈ 0.6 s of CPU on the development machine), with both
``input`` and ``inputParts`` set, which only a CEL rule refuses, so every body is checked in
full and answered 422 and nothing is created. The report gives the probe's p50 and p99 idle
and loaded, and their ratio (target: loaded within 2x of idle).

``--pool`` picks where the gateway checks bodies: ``process`` (the default setting),
``thread``, or ``inline``: on the event loop, as the gateway did before, run by this module
patching :class:`agentrun_gateway.admission.Pool` in the gateway process (no setting offers
it). ``all`` measures the three, interleaved ``--rounds`` times, because on a shared
two-core machine the numbers mostly measure who else is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import jwt
import lightkube
import lightkube.codecs
import lightkube.config.kubeconfig
import yaml

from agentrun import store
from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "bench-secret-bench-secret-bench-secret-0000"
NAMESPACE = "bench"
POOLS = ("process", "thread", "inline")


def costly_body(size: int = 256 * 1024) -> bytes:
    """A create-run body of at most ``size`` bytes whose check costs the most CPU."""
    def body(text: str) -> bytes:
        calls = [{"name": "t", "arguments": "{}"}] * 6  # each call has CEL rules of its own too
        steps = [{"text": text, "toolCalls": calls} for _ in range(1000)]
        return json.dumps({"metadata": {"name": "costly"},
                           "spec": {"input": "hi", "inputParts": [{"type": "text", "text": "hi"}],
                                    "agent": {"model": "scripted", "script": steps}}}).encode()

    fill = (size - len(body(""))) // 1000
    raw = body("x" * fill)
    assert len(raw) <= size, len(raw)
    return raw


def _serve_inline() -> None:
    """The gateway with bodies checked on its event loop (the state before the pool)."""
    from agentrun_gateway import admission, app

    class Inline(admission.Pool):
        def start(self) -> None:
            pass

        async def check(self, raw: bytes, namespace: str, *, creator: str,
                        max_depth: int = admission.MAX_DEPTH) -> admission.Verdict:
            return admission.check(raw, namespace, creator=creator, max_depth=max_depth)

    admission.Pool = Inline  # type: ignore[misc]
    app.main()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _probe(client: httpx.AsyncClient, seconds: float, interval: float) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        response = await client.get("/healthz")
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        await asyncio.sleep(interval)
    return latencies


async def _post_loop(client: httpx.AsyncClient, body: bytes, token: str, stop: asyncio.Event,
                     answers: dict[int, int], checks_ms: list[float]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while not stop.is_set():
        started = time.perf_counter()
        response = await client.post(f"/v1/namespaces/{NAMESPACE}/runs", content=body, headers=headers)
        checks_ms.append((time.perf_counter() - started) * 1000)
        answers[response.status_code] = answers.get(response.status_code, 0) + 1


async def one_round(pool: str, args: argparse.Namespace, kubeconfig: pathlib.Path, state: pathlib.Path,
                    body: bytes) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "AGENTRUN_REDIS_URL": args.redis_url,
           "AGENTRUN_DATABASE_URL": f"sqlite:///{state / 'agentrun.db'}",
           "AGENTRUN_GATEWAY_KUBECONFIG": str(kubeconfig), "AGENTRUN_GATEWAY_JWT_SECRET": SECRET,
           "AGENTRUN_GATEWAY_HOST": "127.0.0.1", "AGENTRUN_GATEWAY_PORT": str(port),
           "AGENTRUN_LOG_LEVEL": "WARNING", "AGENTRUN_GATEWAY_RATE_LIMIT_PER_SECOND": "100000",
           "AGENTRUN_GATEWAY_RATE_LIMIT_BURST": "100000",
           "AGENTRUN_GATEWAY_VALIDATION_POOL": "thread" if pool == "thread" else "process"}
    argv = ([sys.executable, "-c", "from bench import gateway_validation as g; g._serve_inline()"]
            if pool == "inline" else [sys.executable, "-m", "agentrun_gateway.app"])
    with open(state / f"gateway-{pool}.log", "wb") as log:
        gateway = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    token = jwt.encode({"sub": "bench", "aud": "agentrun", "exp": int(time.time()) + 3600,
                        "namespaces": [NAMESPACE]}, SECRET, algorithm="HS256")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as probe, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as load:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await probe.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((state / f"gateway-{pool}.log").read_text())
                await asyncio.sleep(0.1)
            # warm up: the validation worker has compiled the schema once one body came back
            warm = await load.post(f"/v1/namespaces/{NAMESPACE}/runs", content=body,
                                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            assert warm.status_code == 422, warm.text[:300]
            interval = args.interval_ms / 1000
            idle = await _probe(probe, args.seconds, interval)
            stop = asyncio.Event()
            answers: dict[int, int] = {}
            checks: list[float] = []
            posters = [asyncio.create_task(_post_loop(load, body, token, stop, answers, checks))
                       for _ in range(args.posters)]
            await asyncio.sleep(0.5)  # the first bodies are being checked
            loaded = await _probe(probe, args.seconds, interval)
            stop.set()
            await asyncio.gather(*posters)
    finally:
        gateway.terminate()
        gateway.wait(15)
    return {"pool": pool, "idle": idle, "loaded": loaded, "answers": answers, "checks_ms": checks}


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from agentrun_local import emulator
    state = pathlib.Path(tempfile.mkdtemp(prefix="bench-validation-"))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    try:
        kubeconfig = server.write_kubeconfig(state / "kubeconfig")
        await store.migrate_url(f"sqlite:///{state / 'agentrun.db'}")
        api = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig),
                               field_manager="bench")
        api.create(lightkube.codecs.from_dict({"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": NAMESPACE}}))
        body = costly_body()
        pools = POOLS if args.pool == "all" else (args.pool,)
        rounds = []
        for index in range(args.rounds):
            for pool in pools:
                result = await one_round(pool, args, kubeconfig, state, body)
                rounds.append(result)
                report.line(bench="gateway_validation", round=index, pool=pool, body_bytes=len(body),
                            idle=report.summary(result["idle"]), loaded=report.summary(result["loaded"]),
                            answers=result["answers"], check_p50_ms=round(report.percentile(result["checks_ms"], 50)))
        return rounds
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gateway_validation")
    parser.add_argument("--pool", choices=(*POOLS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each pool, interleaved")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the idle and of the loaded phase")
    parser.add_argument("--posters", type=int, default=2, help="clients posting 256 KiB bodies in a loop")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between two /healthz probes")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    rounds = asyncio.run(measure(args))
    verdict = True
    for pool in dict.fromkeys(r["pool"] for r in rounds):
        idle = [v for r in rounds if r["pool"] == pool for v in r["idle"]]
        loaded = [v for r in rounds if r["pool"] == pool for v in r["loaded"]]
        i50, i99 = report.percentile(idle, 50), report.percentile(idle, 99)
        l50, l99 = report.percentile(loaded, 50), report.percentile(loaded, 99)
        met = l50 <= 2 * i50 and l99 <= 2 * i99
        if pool == "process":
            verdict = met
        report.result(f"gateway_validation.{pool}", idle_p50_ms=round(i50, 2), idle_p99_ms=round(i99, 2),
                      loaded_p50_ms=round(l50, 2), loaded_p99_ms=round(l99, 2),
                      ratio_p50=round(l50 / i50, 2), ratio_p99=round(l99 / i99, 2), target_met=met)
    return 0 if verdict else 1
