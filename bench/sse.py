"""``python -m bench sse``: one streaming run, N concurrent SSE clients through the gateway.

The gateway runs as its own process (``python -m agentrun.gateway.app``, real uvicorn) against
real Redis, the Kubernetes API emulator (in this process) and a SQLite database. This process
writes the run's events with :class:`agentrun.streams.StreamWriter`, paced like a model
streaming tokens, each carrying its send time; every client subtracts it from the time it
parsed the event. Clients are minimal HTTP/1.1 readers on raw sockets (chunked decoding and
SSE parsing only), so the client side costs as little as possible on a small machine.

First a single client on one run (the baseline), then ``--clients`` clients on another run,
in the same gateway process. Reported: delivery latency p50/p99 of each, the gateway's RSS
before and at the peak of the N-client phase, and a ``RESULT name=sse`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import jwt
import lightkube
import lightkube.codecs
import lightkube.config.kubeconfig
import redis.asyncio as aioredis
import yaml

from agentrun import keys, kube, store, streams
from bench import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "bench-secret-bench-secret-bench-secret-0000"


class Client:
    """One SSE reader: connects, then records the latency of every event that carries ``t``."""

    def __init__(self, port: int, path: str, token: str) -> None:
        self.port, self.path, self.token = port, path, token
        self.latencies: list[float] = []
        self.first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    async def run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            self.error = str(exc)
            if not self.first.done():
                self.first.set_result(False)
            return
        writer.write((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                      f"Authorization: Bearer {self.token}\r\n\r\n").encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.error = head.split(b"\r\n", 1)[0].decode()
                return
            buffer = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    return
                buffer += await reader.readexactly(size)
                await reader.readexactly(2)
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    if self._event(block):
                        return
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.error = self.error or repr(exc)
        finally:
            if not self.first.done():
                self.first.set_result(False)
            writer.close()

    def _event(self, block: bytes) -> bool:
        """Handle one SSE block; True at the terminal event."""
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                now = time.time()
                event = json.loads(line[6:])
                if not self.first.done():
                    self.first.set_result(True)
                if "t" in event:
                    self.latencies.append((now - event["t"]) * 1000)
                return streams.is_terminal(event)
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _clients(port: int, path: str, token: str, clients: int, events: int, conn: Any) -> None:
    readers = [Client(port, path, token) for _ in range(clients)]
    tasks = [asyncio.create_task(r.run()) for r in readers]
    for i in range(0, clients, 100):  # connect in waves: the measure is delivery, not a connection storm
        await asyncio.gather(*(r.first for r in readers[i:i + 100]))
    conn.send(("ready", time.process_time()))
    await asyncio.gather(*tasks)
    errors = collections.Counter(r.error for r in readers if r.error)
    if errors:
        print(f"client errors: {dict(errors.most_common(3))}", file=sys.stderr)
    failed = sum(1 for r in readers if r.error or len(r.latencies) != events)
    conn.send(([v for r in readers for v in r.latencies], failed, time.process_time()))


def clients_process(port: int, path: str, token: str, clients: int, events: int, conn: Any) -> None:
    """The SSE clients, in a process of their own so that the writer's pacing is not theirs."""
    asyncio.run(_clients(port, path, token, clients, events, conn))


async def phase(redis: aioredis.Redis, api: lightkube.Client, port: int, token: str, namespace: str,
                clients: int, events: int, interval: float, gateway_pid: int) -> tuple[list[float], float, int]:
    """Latencies (ms) of every event at every client, peak gateway RSS (MiB), failed clients."""
    name = f"bench-{uuid.uuid4().hex[:6]}"
    obj = {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": name, "namespace": namespace},
           "spec": {"input": "bench", "agent": {"model": "scripted"}}}
    uid = kube.to_dict(api.create(lightkube.codecs.from_dict(obj)))["metadata"]["uid"]
    writer = streams.StreamWriter(redis, uid)
    writer.emit({"type": streams.STATUS, "status": "running", "attempt": 1})
    await writer.flush()
    loop = asyncio.get_running_loop()
    here, there = multiprocessing.get_context("spawn").Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=clients_process, args=(port, f"/v1/namespaces/{namespace}/runs/{name}/stream", token, clients,
                                      events, there))
    child.start()
    _, cpu_clients = await loop.run_in_executor(None, here.recv)
    peak = rss_mib(gateway_pid)
    cpu_gateway, started = cpu_seconds(gateway_pid), time.monotonic()
    for i in range(events):
        writer.emit({"type": streams.ASSISTANT, "delta": f"tok{i} ", "iteration": 1, "t": time.time()})
        await asyncio.sleep(interval)
        if i % 20 == 0:
            peak = max(peak, rss_mib(gateway_pid))
    writer.emit({"type": streams.STATUS, "status": "succeeded", "reason": "Completed"})
    await writer.flush()
    latencies, failed, cpu_clients_end = await loop.run_in_executor(None, here.recv)
    elapsed = time.monotonic() - started
    child.join()
    report.line(bench="sse", clients=clients,
                cpu_share_gateway=round((cpu_seconds(gateway_pid) - cpu_gateway) / elapsed, 2),
                cpu_share_clients=round((cpu_clients_end - cpu_clients) / elapsed, 2))
    await redis.delete(keys.stream(uid))
    return latencies, peak, failed


async def measure(args: argparse.Namespace) -> int:
    from agentrun import emulator

    state = pathlib.Path(tempfile.mkdtemp(prefix="bench-sse-"))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    kubeconfig = server.write_kubeconfig(state / "kubeconfig")
    database_url = f"sqlite:///{state / 'agentrun.db'}"
    await store.migrate_url(database_url)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AGENTRUN_REDIS_URL": args.redis_url, "AGENTRUN_DATABASE_URL": database_url,
           "AGENTRUN_GATEWAY_KUBECONFIG": str(kubeconfig), "AGENTRUN_GATEWAY_JWT_SECRET": SECRET,
           "AGENTRUN_GATEWAY_HOST": "127.0.0.1", "AGENTRUN_GATEWAY_PORT": str(port),
           "AGENTRUN_LOG_LEVEL": "WARNING"}
    log = open(state / "gateway.log", "wb")  # noqa: SIM115
    gateway = subprocess.Popen([sys.executable, "-m", "agentrun.gateway.app"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    api = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig), field_manager="bench")
    redis = aioredis.Redis.from_url(args.redis_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                if gateway.poll() is not None or time.monotonic() > deadline:
                    print((state / "gateway.log").read_text(), file=sys.stderr)
                    return 1
                await asyncio.sleep(0.1)
        namespace = "bench"
        api.create(lightkube.codecs.from_dict(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        token = jwt.encode({"sub": "bench", "aud": "agentrun", "exp": int(time.time()) + 3600,
                            "namespaces": [namespace]}, SECRET, algorithm="HS256")
        idle_rss = rss_mib(gateway.pid)
        interval = args.interval_ms / 1000
        one, one_rss, one_failed = await phase(redis, api, port, token, namespace, 1, args.events, interval,
                                               gateway.pid)
        many, many_rss, many_failed = await phase(redis, api, port, token, namespace, args.clients, args.events,
                                                  interval, gateway.pid)
    finally:
        await redis.aclose()
        gateway.terminate()
        gateway.wait(15)
        log.close()
        server.stop()
        if gateway.returncode in (0, -15):  # a clean stop: nothing to look at
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"gateway log: {state / 'gateway.log'}", file=sys.stderr)
    base, load = report.summary(one), report.summary(many)
    report.line(bench="sse", variant="1 client", rss_mib=round(one_rss, 1), failed=one_failed, **base)
    report.line(bench="sse", variant=f"{args.clients} clients", rss_mib=round(many_rss, 1), failed=many_failed,
                **load)
    report.result(
        "sse", clients=args.clients, events=args.events, interval_ms=args.interval_ms,
        p50_ms=load["p50_ms"], p99_ms=load["p99_ms"], baseline_p50_ms=base["p50_ms"],
        baseline_p99_ms=base["p99_ms"], rss_idle_mib=round(idle_rss, 1), rss_peak_mib=round(many_rss, 1),
        failed_clients=many_failed, target_met=load["p99_ms"] <= 20 and many_failed == 0,
    )
    return 0 if many_failed == 0 else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sse")
    parser.add_argument("--redis-url", default=os.environ.get("AGENTRUN_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--clients", type=int, default=1000, help="concurrent SSE clients in the loaded phase")
    parser.add_argument("--events", type=int, default=200, help="paced events per phase")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between events")
    args = parser.parse_args(argv)
    return asyncio.run(measure(args))


