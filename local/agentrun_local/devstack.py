"""The whole system on one machine: ``agentrun dev`` and ``agentrun demo``.

Starts the Kubernetes API emulator (with every CRD of ``agentrun.schema.crds_dir()`` and a
kubeconfig for kubectl), an embedded Redis (fakeredis over TCP, so a second terminal can follow streams)
unless ``AGENTRUN_REDIS_URL`` is set, SQLite unless ``AGENTRUN_DATABASE_URL`` is set, the
in-process stub broker unless ``AGENTRUN_BROKER_URL`` is set, then the worker and the
operator in this process. The ``default`` WorkerPool is created; the worker component serves
every WorkerPool applied later too (``agentrun_worker.local``), as the operator's Deployments
do in a cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import socket
import threading
from typing import Any

import structlog
import yaml

from agentrun import broker as brokers
from agentrun import components, kube, schema, settings  # noqa: F401  (kube registers the resource kinds)

logger = structlog.get_logger(__name__)

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_pool(namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"minReplicas": 1, "maxReplicas": 1},
    }


def apply(kubeconfig: pathlib.Path, obj: dict[str, Any]) -> None:
    """Create ``obj`` unless it exists (a tiny ``kubectl apply`` for the stack's own objects)."""
    import lightkube
    import lightkube.codecs
    import lightkube.config.kubeconfig

    client = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig))
    try:
        client.create(lightkube.codecs.from_dict(obj))
    except lightkube.ApiError as exc:
        if exc.status.code != 409:
            raise
    finally:
        client.close()


@dataclasses.dataclass
class Endpoints:
    kubeconfig: pathlib.Path
    api_url: str
    redis_url: str
    database_url: str
    broker: str
    worker_metrics_url: str | None = None

    def exports(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig} AGENTRUN_REDIS_URL={self.redis_url}"


class DevStack:
    def __init__(self, config: settings.Settings | None = None, *, api_port: int = 0, redis_port: int = 0) -> None:
        self.config = config or settings.load()
        self.api_port = api_port
        self.redis_port = redis_port
        self._stops: list[Any] = []
        self.endpoints: Endpoints | None = None
        self.emulator: Any = None

    def start(self) -> Endpoints:
        for noisy in ("aiohttp.access", "httpx2", "httpx"):  # one line per API call drowns the rest
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            from agentrun_local import emulator
        except ImportError as exc:
            raise RuntimeError("agentrun dev needs the local extras: pip install -e '.[local]'") from exc
        state = pathlib.Path(self.config.state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)

        # every CRD of the project (AgentRun, AgentWorkflow, WorkerPool), from the source tree or
        # from the copy a wheel carries (agentrun/crds), as agentrun.schema finds them
        crds = [yaml.safe_load(p.read_text()) for p in sorted(schema.crds_dir().glob("*.yaml"))]
        # a long-lived dev server keeps a bounded request history
        self.emulator = emulator.EmulatorServer(port=self.api_port, crds=crds, history_limit=10_000)
        self.emulator.start()
        self._stops.append(self.emulator.stop)
        kubeconfig = self.emulator.write_kubeconfig(state / "kubeconfig")
        os.environ["KUBECONFIG"] = str(kubeconfig)

        redis_url = self.config.redis_url
        if not redis_url:
            redis_url = self._start_redis()
        database_url = self.config.database_url or f"sqlite:///{state / 'agentrun.db'}"
        self.config = self.config.model_copy(update={"redis_url": redis_url, "database_url": database_url})
        os.environ["AGENTRUN_REDIS_URL"] = redis_url

        apply(kubeconfig, default_pool())
        dramatiq_broker = brokers.setup(self.config)
        self._stops.append(dramatiq_broker.close)
        worker = components.load("worker")(self.config, dramatiq_broker)
        self._stops.append(worker.stop)
        operator = components.load("operator")(self.config, dramatiq_broker)
        self._stops.append(operator.stop)
        self.endpoints = Endpoints(
            kubeconfig=kubeconfig,
            api_url=self.emulator.url,
            redis_url=redis_url,
            database_url=database_url,
            broker="RabbitMQ" if self.config.broker_url else "in-process stub broker",
            worker_metrics_url=getattr(worker, "metrics_url", None),
        )
        return self.endpoints

    def _start_redis(self) -> str:
        from fakeredis import TcpFakeServer

        port = self.redis_port or _free_port()
        server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, name="agentrun-redis", daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        self._stops.append(stop)
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                logger.warning("dev.stop_failed", error=str(exc))

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
