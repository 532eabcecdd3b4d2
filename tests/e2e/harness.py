"""Processes and probes for the end-to-end tests.

The Kubernetes API emulator runs in the test process; the operator (``kopf run``) and the
workers (``dramatiq``) run as real subprocesses against real RabbitMQ, Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import lightkube
import lightkube.config.kubeconfig
import pika

from agentrun import kube

BIN = pathlib.Path(sys.executable).parent
ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Proc:
    """A subprocess with its output in a log file, shown when a test fails."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: pathlib.Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._terminated = False
        self.metrics_url: str | None = None

    def start(self) -> Proc:
        self._terminated = False
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up, like a node that disappears."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self) -> None:
        """SIGTERM to the main process only, and only once, as the kubelet does: Dramatiq's main
        process forwards it; a second signal to its children would make them hard-kill."""
        if self.popen is not None and self.popen.poll() is None and not self._terminated:
            self._terminated = True
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        self.terminate()
        if self.popen is not None and self.popen.poll() is None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "_log"):
            self._log.close()


@contextlib.contextmanager
def emulated_bed(state: pathlib.Path, *, amqp_url: str, redis_url: str, database_url: str) -> Iterator[Bed]:
    """A bed on an API emulator of its own serving crds/, over a migrated database; its
    processes and the emulator are stopped when the block ends."""
    import yaml
    from agentrun_local import emulator

    from agentrun import store

    asyncio.run(store.migrate_url(database_url))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    bed = Bed(kubeconfig=server.write_kubeconfig(state / "kubeconfig"), amqp_url=amqp_url, redis_url=redis_url,
              database_url=database_url, log_dir=state, emulator=server)
    try:
        yield bed
    finally:
        bed.stop_all()
        server.stop()


class Bed:
    """The test bed of one session: endpoints, environment and helpers."""

    def __init__(self, *, kubeconfig: pathlib.Path, amqp_url: str, redis_url: str, database_url: str,
                 log_dir: pathlib.Path, emulator: Any) -> None:
        self.kubeconfig = kubeconfig
        self.amqp_url = amqp_url
        self.redis_url = redis_url
        self.database_url = database_url
        self.log_dir = log_dir
        self.emulator = emulator
        self.api = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig),
                                    field_manager="e2e")
        self.procs: list[Proc] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "AGENTRUN_BROKER_URL": self.amqp_url,
            "AGENTRUN_REDIS_URL": self.redis_url,
            "AGENTRUN_DATABASE_URL": self.database_url,
            "AGENTRUN_LOG_FORMAT": "json",
            "AGENTRUN_POOL_WAIT_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    # -- processes ----------------------------------------------------------------------------

    def start_operator(self, **env: str) -> Proc:
        port = free_port()
        env.setdefault("AGENTRUN_METRICS_PORT", str(free_port()))
        proc = Proc("operator", [str(BIN / "kopf"), "run", "-m", "agentrun_operator", "--all-namespaces",
                                 "--standalone", f"--liveness=http://127.0.0.1:{port}/healthz"],
                    self.env(**env), self.log_dir).start()
        proc.metrics_url = f"http://127.0.0.1:{env['AGENTRUN_METRICS_PORT']}/metrics"
        self.procs.append(proc)

        def healthy() -> bool:
            if not proc.alive():
                raise AssertionError(f"operator exited:\n{proc.output()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, "the operator to be healthy", interval=0.1)
        return proc

    def start_worker(self, queue: str, *, threads: int = 4, processes: int = 1, **env: str) -> Proc:
        env.setdefault("AGENTRUN_METRICS_PORT", str(free_port()))  # never the fixed 9191 of a pod
        proc = Proc("worker", [str(BIN / "dramatiq"), "agentrun_worker.actors", "--processes", str(processes),
                               "--threads", str(threads)],
                    self.env(AGENTRUN_QUEUE=queue, **env), self.log_dir).start()
        proc.metrics_url = f"http://127.0.0.1:{env['AGENTRUN_METRICS_PORT']}/metrics"
        self.procs.append(proc)

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker exited:\n{proc.output()}")
            return "ready for action" in proc.output()

        wait_until(ready, 30, "the worker to be ready", interval=0.1)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:  # all shut down at once, then each is waited for
            proc.terminate()
        for proc in self.procs:
            proc.stop()

    # -- resources ----------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        import lightkube.codecs

        return kube.to_dict(self.api.create(lightkube.codecs.from_dict(obj)))

    def new_namespace(self) -> str:
        """A namespace of its own with a WorkerPool "default" (queue ``agentrun.<namespace>.default``)."""
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                     "metadata": {"name": "default", "namespace": name}, "spec": {}})
        return name

    def get_run(self, namespace: str, name: str) -> dict[str, Any]:
        return kube.to_dict(self.api.get(kube.AgentRun, name, namespace=namespace))

    def patch_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        import lightkube.types

        self.api.patch(kube.AgentRun, name, {"spec": spec}, namespace=namespace,
                       patch_type=lightkube.types.PatchType.MERGE)

    def wait_phase(self, namespace: str, name: str, *wanted: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            obj = self.get_run(namespace, name)
            return obj if (obj.get("status") or {}).get("phase") in wanted else None

        try:
            return wait_until(reached, timeout, f"{namespace}/{name} to reach {wanted}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            logs = "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in self.procs)
            raise AssertionError(f"{exc}; status={self.get_run(namespace, name).get('status')}\n{logs}") from None

    def queue_depth(self, queue: str) -> int:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def delete_queues(self, *queues: str) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = conn.channel()
            for queue in queues:
                for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                    channel.queue_delete(name)
        finally:
            conn.close()

    def db_row(self, uid: str) -> dict[str, Any] | None:
        import asyncpg

        async def fetch() -> dict[str, Any] | None:
            conn = await asyncpg.connect(self.database_url)
            try:
                row = await conn.fetchrow("SELECT * FROM agent_runs WHERE id = $1", uid)
                return dict(row) if row else None
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def db_messages(self, thread_id: str) -> list[dict[str, Any]]:
        import asyncpg

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database_url)
            try:
                rows = await conn.fetch("SELECT * FROM messages WHERE thread_id = $1 ORDER BY seq", thread_id)
                return [dict(r) for r in rows]
            finally:
                await conn.close()

        return asyncio.run(fetch())


class PhaseRecorder:
    """Watches one AgentRun through the API and records every phase it passes through."""

    def __init__(self, bed: Bed, namespace: str, name: str) -> None:
        self.phases: list[str] = []
        self._bed, self._ns, self._name = bed, namespace, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(self._bed.kubeconfig))
        while not self._stop.is_set():
            try:
                for _, obj in client.watch(kube.AgentRun, namespace=self._ns):
                    data = kube.to_dict(obj)
                    if data["metadata"]["name"] != self._name:
                        continue
                    phase = (data.get("status") or {}).get("phase")
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.05)

    def stop(self) -> list[str]:
        self._stop.set()
        return self.phases
