"""``python -m bench sse``: one streaming run, N concurrent SSE clients through the gateway.

The gateway runs as its own process(es) (``python -m agentrun_gateway.app``, real uvicorn with
uvloop and httptools; ``--gateway-procs`` sets ``AGENTRUN_GATEWAY_WORKERS``) against real Redis,
the Kubernetes API emulator (in this process) and a SQLite database. This process writes the
run's events with :class:`agentrun.streams.StreamWriter`, one every ``--interval-ms`` like a
model streaming tokens, each carrying ``t``, the writer's clock just before its ``XADD``.
Latency = the time a client has the complete event (its blank-line terminator arrived) − ``t``,
over every event at every client. Clients are protocol callbacks on uvloop that neither decode
chunks nor parse JSON (:class:`Client`), in ``--client-procs`` processes.

First a single client on one run (the baseline), then ``--clients`` clients on another run,
same gateway. Reported per phase: latency percentiles; the gateway's RSS (all its processes)
at the peak; CPU — cores used on average by the gateway, the clients and the writer, and
CPU time per delivery (one event to one client); ``gateway_cpu_wait``, the share of the time
the gateway was ready to run but waited for a core (``/proc/PID/schedstat``: other load on the
machine); the load average; how the kernel spread the connections over the gateway's
processes. Then a ``RESULT name=sse`` line. On a small shared machine, read the latency
together with ``gateway_cpu_wait`` and ``loadavg``: the CPU per delivery is the stable number.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import multiprocessing
import os
import pathlib
import re
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


TIME = re.compile(rb'"t":([0-9.]+)')
TERMINAL = b'"type":"status","status":"succeeded"'


class Client(asyncio.Protocol):
    """One SSE reader on a raw connection: records the latency of every event that carries ``t``.

    A protocol callback, not a stream reader, and no JSON: at a thousand clients per process
    the client's own per-event cost is paid a thousand times per event, and a heavy client
    inflates the latency it measures. An event counts when its blank-line terminator has
    arrived (the event is complete); its latency is the arrival time minus its ``t``, the
    writer's clock just before the ``XADD``. The chunked framing is not decoded: frames never
    contain ``\r\n`` and the gateway writes whole frames, so the chunk-size lines only sit
    between events; the terminal event is recognised by its JSON.
    """

    def __init__(self, request: bytes, connected: asyncio.Future[bool], done: asyncio.Future[None]) -> None:
        self.request = request
        self.connected, self.done = connected, done
        self.latencies: list[float] = []
        self.error: str | None = None
        self.buffer = b""
        self.head = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer + data
        if self.head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 200"):
                self._finish(buffer.split(b"\r\n", 1)[0].decode())
                return
            self.head = False
            buffer = buffer[end + 4:]
            self.connected.set_result(True)
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            self.buffer = buffer
            return
        complete, self.buffer = buffer[:cut], buffer[cut + 2:]
        self.latencies.extend((now - float(m)) * 1000 for m in TIME.findall(complete))
        if TERMINAL in complete:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection lost: {exc!r}")

    def _finish(self, error: str | None) -> None:
        if self.done.done():
            return
        self.error = error
        if not self.connected.done():
            self.connected.set_result(False)
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


def cpu_seconds(pid: int, *, system_only: bool = False) -> float:
    """User + system (or only system: the kernel, e.g. socket writes) CPU time of a process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + (0 if system_only else int(fields[11]))) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _clients(port: int, path: str, token: str, clients: int, events: int, conn: Any) -> None:
    loop = asyncio.get_running_loop()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    readers: list[Client] = []
    for i in range(0, clients, 50):  # connect in waves: the measure is delivery, not a connection storm
        wave = [Client(request, loop.create_future(), loop.create_future()) for _ in range(min(50, clients - i))]
        for client in wave:
            try:
                await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
            except OSError as exc:
                client._finish(str(exc))
        readers.extend(wave)
        await _within(60, {c: c.connected for c in wave}, "no response head within 60 s")
    # The clients measure the gateway: no pause of their own (a full collection here took
    # 20 ms) may count as its latency
    gc.disable()
    conn.send(("ready", time.process_time()))
    await _within(events * 0.5 + 120, {c: c.done for c in readers}, "no terminal event in time")
    errors = collections.Counter(r.error for r in readers if r.error)
    if errors:
        print(f"client errors: {dict(errors.most_common(3))}", file=sys.stderr)
    failed = sum(1 for r in readers if r.error or len(r.latencies) != events)
    conn.send(([v for r in readers for v in r.latencies], failed, time.process_time()))


async def _within(seconds: float, waits: dict[Client, asyncio.Future[Any]], why: str) -> None:
    """Wait for each client's future; those still waiting after ``seconds`` fail with ``why``."""
    await asyncio.wait(waits.values(), timeout=seconds)
    for client, future in waits.items():
        if not future.done():
            client._finish(why)


def clients_process(port: int, path: str, token: str, clients: int, events: int, conn: Any) -> None:
    """Some of the SSE clients, in a process of their own (on uvloop, as the gateway)."""
    import uvloop

    uvloop.run(_clients(port, path, token, clients, events, conn))


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (a gateway with several worker processes)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return found


def run_delay_seconds(pid: int) -> float:
    """Time the process's main thread was ready to run but waited for a CPU (``/proc/PID/schedstat``)."""
    try:
        return int(pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except OSError:
        return 0.0


def sockets_per_process(root: int) -> list[int]:
    """Open sockets of each gateway process that has any: how the kernel spread the clients."""
    counts = []
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            n = sum(1 for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir()
                    if os.readlink(fd).startswith("socket:"))
            counts.append(n)
    return sorted((n for n in counts if n > 2), reverse=True)


def tree_rss_mib(root: int) -> float:
    return sum(rss_mib(pid) for pid in process_tree(root))


def tree_cpu_seconds(root: int, *, system_only: bool = False) -> float:
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid, system_only=system_only)
    return total


def tree_run_delay(root: int) -> float:
    return sum(run_delay_seconds(pid) for pid in process_tree(root))


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over ``parts`` processes (no empty share)."""
    shares = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [n for n in shares if n]


async def wait_for_workers(root: int, workers: int) -> None:
    """With several gateway processes, wait until all of them are up (each listens on its own)."""
    if workers <= 1:
        return
    deadline = time.monotonic() + 60
    while len(process_tree(root)) < workers + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # their startup (imports, the app's clients)


async def phase(redis: aioredis.Redis, api: lightkube.Client, port: int, token: str, namespace: str,
                clients: int, events: int, interval: float, gateway_pid: int,
                client_procs: int) -> tuple[list[float], float, int, dict[str, Any]]:
    """Latencies (ms) of every event at every client, peak gateway RSS (MiB), failed clients, CPU shares."""
    name = f"bench-{uuid.uuid4().hex[:6]}"
    obj = {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": name, "namespace": namespace},
           "spec": {"input": "bench", "agent": {"model": "scripted"}}}
    uid = kube.to_dict(api.create(lightkube.codecs.from_dict(obj)))["metadata"]["uid"]
    writer = streams.StreamWriter(redis, uid)
    writer.emit({"type": streams.STATUS, "status": "running", "attempt": 1})
    await writer.flush()
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for share in split(clients, client_procs):
        here, there = spawn.Pipe()
        child = spawn.Process(target=clients_process, args=(
            port, f"/v1/namespaces/{namespace}/runs/{name}/stream", token, share, events, there))
        child.start()
        pipes.append(here)
        children.append(child)
    cpu_clients = sum([(await loop.run_in_executor(None, here.recv))[1] for here in pipes])
    peak = tree_rss_mib(gateway_pid)
    spread = sockets_per_process(gateway_pid)
    cpu_gateway, cpu_self, started = tree_cpu_seconds(gateway_pid), time.process_time(), time.monotonic()
    waited, load_before = tree_run_delay(gateway_pid), os.getloadavg()[0]
    kernel = tree_cpu_seconds(gateway_pid, system_only=True)
    gc.disable()  # the writer's clock is t: a collection between t and the XADD (up to 80 ms) is not the gateway's
    for i in range(events):
        # t: the writer's clock just before the XADD (emit hands the entry to the flusher, which
        # sends it on the next turn of this loop)
        writer.emit({"type": streams.ASSISTANT, "delta": f"tok{i} ", "iteration": 1, "t": time.time()})
        await asyncio.sleep(interval)
        if i % 20 == 0:
            peak = max(peak, tree_rss_mib(gateway_pid))
    writer.emit({"type": streams.STATUS, "status": "succeeded", "reason": "Completed"})
    await writer.flush()
    gc.enable()
    latencies: list[float] = []
    failed, cpu_clients_end = 0, 0.0
    for here in pipes:
        got, bad, cpu = await loop.run_in_executor(None, here.recv)
        latencies += got
        failed += bad
        cpu_clients_end += cpu
    elapsed = time.monotonic() - started
    for child in children:
        child.join()
    deliveries = clients * (events + 2)
    used_gateway, used_clients = tree_cpu_seconds(gateway_pid) - cpu_gateway, cpu_clients_end - cpu_clients
    cpu = {
        # cores busy on average, and CPU time per event delivered to one client
        "cpu_gateway": round(used_gateway / elapsed, 2),
        "cpu_clients": round(used_clients / elapsed, 2),
        "cpu_writer": round((time.process_time() - cpu_self) / elapsed, 2),
        "gateway_us_per_delivery": round(used_gateway / deliveries * 1e6, 1),
        # the kernel's part of it (socket writes, loopback TCP, wake-ups)
        "gateway_kernel_share": round((tree_cpu_seconds(gateway_pid, system_only=True) - kernel)
                                      / max(used_gateway, 1e-9), 2),
        "clients_us_per_delivery": round(used_clients / deliveries * 1e6, 1),
        # share of the time the gateway was ready to run but waited for a core: other load
        "gateway_cpu_wait": round((tree_run_delay(gateway_pid) - waited) / elapsed, 2),
        "loadavg": round(max(load_before, os.getloadavg()[0]), 1),
        "sockets_per_gateway_process": spread,
    }
    await redis.delete(keys.stream(uid))
    return latencies, peak, failed, cpu


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement (a fresh gateway): the loaded phase's p99, whether the target was met,
    and how many clients failed."""
    from agentrun_local import emulator

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
           "AGENTRUN_LOG_LEVEL": "WARNING", "AGENTRUN_GATEWAY_WORKERS": str(args.gateway_procs)}
    log = open(state / "gateway.log", "wb")  # noqa: SIM115
    gateway = subprocess.Popen([sys.executable, "-m", "agentrun_gateway.app"], env=env, stdout=log,
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
                    return {"p99_ms": float("nan"), "target_met": False, "failed": -1}
                await asyncio.sleep(0.1)
        namespace = "bench"
        api.create(lightkube.codecs.from_dict(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
        token = jwt.encode({"sub": "bench", "aud": "agentrun", "exp": int(time.time()) + 3600,
                            "namespaces": [namespace]}, SECRET, algorithm="HS256")
        await wait_for_workers(gateway.pid, args.gateway_procs)
        idle_rss = tree_rss_mib(gateway.pid)
        interval = args.interval_ms / 1000
        one, one_rss, one_failed, one_cpu = await phase(redis, api, port, token, namespace, 1, args.events,
                                                        interval, gateway.pid, 1)
        many, many_rss, many_failed, many_cpu = await phase(redis, api, port, token, namespace, args.clients,
                                                            args.events, interval, gateway.pid, args.client_procs)
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
    report.line(bench="sse", variant="1 client", rss_mib=round(one_rss, 1), failed=one_failed, **one_cpu, **base)
    report.line(bench="sse", variant=f"{args.clients} clients", rss_mib=round(many_rss, 1), failed=many_failed,
                **many_cpu, **load)
    met = load["p99_ms"] <= 20 and many_failed == 0
    report.result(
        "sse", clients=args.clients, events=args.events, interval_ms=args.interval_ms,
        gateway_procs=args.gateway_procs, client_procs=args.client_procs, cores=os.cpu_count(),
        p50_ms=load["p50_ms"], p99_ms=load["p99_ms"], baseline_p50_ms=base["p50_ms"],
        baseline_p99_ms=base["p99_ms"], ratio_p99=round(load["p99_ms"] / base["p99_ms"], 1),
        rss_idle_mib=round(idle_rss, 1), rss_peak_mib=round(many_rss, 1),
        cpu_gateway=many_cpu["cpu_gateway"], cpu_clients=many_cpu["cpu_clients"],
        gateway_us_per_delivery=many_cpu["gateway_us_per_delivery"],
        gateway_kernel_share=many_cpu["gateway_kernel_share"], gateway_cpu_wait=many_cpu["gateway_cpu_wait"],
        loadavg=many_cpu["loadavg"],
        failed_clients=many_failed, target_met=met,
    )
    return {"p99_ms": load["p99_ms"], "target_met": met, "failed": many_failed}


async def repeated(args: argparse.Namespace) -> int:
    """``--repeat`` measurements one after the other; with more than one, a summary line: on a
    shared machine one run says little, how many of N met the target says more."""
    runs = [await measure(args) for _ in range(args.repeat)]
    if args.repeat > 1:
        p99 = sorted(r["p99_ms"] for r in runs)
        report.result("sse-repeat", clients=args.clients, repeats=args.repeat,
                      met=sum(1 for r in runs if r["target_met"]), p99_ms_min=p99[0],
                      p99_ms_median=p99[len(p99) // 2], p99_ms_max=p99[-1],
                      failed_clients=sum(max(r["failed"], 0) for r in runs))
    return 0 if all(r["failed"] == 0 for r in runs) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sse")
    parser.add_argument("--redis-url", default=os.environ.get("AGENTRUN_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--clients", type=int, default=1000, help="concurrent SSE clients in the loaded phase")
    parser.add_argument("--events", type=int, default=200, help="paced events per phase")
    parser.add_argument("--gateway-procs", type=int, default=1,
                        help="gateway worker processes (AGENTRUN_GATEWAY_WORKERS)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="processes the loaded phase's clients are spread over")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="pause between events")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measurements in a row (each with a fresh gateway), then a summary line")
    args = parser.parse_args(argv)
    return asyncio.run(repeated(args))


