"""The worker as an in-process component of ``agentrun dev`` (entry point ``worker``).

In a cluster the operator gives every WorkerPool a Deployment of workers on the pool's
queue, with the pool's ``env`` and ``mcpServers``. ``agentrun dev`` has no kubelet, so this
module stands in for it: it declares the actor on the dev stack's broker, runs one Dramatiq
``Worker`` in this process, and keeps it consuming the queue of every WorkerPool applied to
the dev stack — a pool applied later gets its queue consumed, a deleted pool's queue is paused
— with that pool's settings and environment for its messages (``runtime.use_pool``; the
``CurrentPool`` middleware picks them per message). It reports the one worker it runs for a
pool on the pool's Deployment (``status.readyReplicas: 1``), as a Deployment controller
would, so ``kubectl get wp`` shows READY 1.

What to do is decided by pure functions (:func:`plan`, :func:`resolve_env`,
:func:`pool_settings`); :class:`DevWorkers` only applies it, polling the API every
``POLL_SECONDS``.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import dramatiq
import dramatiq.common
import lightkube
import lightkube.resources.apps_v1
import lightkube.resources.core_v1
import lightkube.types
import structlog

from agentrun import kube, message, settings
from agentrun_worker import config as worker_settings
from agentrun_worker import metrics, middleware, runtime

logger = structlog.get_logger(__name__)

POLL_SECONDS = 0.5
"""How often the pools are listed: a pool applied to dev has a worker within half a second."""

WORKER_THREADS = 16
"""Threads of dev's one Dramatiq worker, shared by every pool's queue: two pools' default
``threads`` (8), enough for the examples and a few runs of one's own."""

_NO_QUEUE = "agentrun.dev.no-pool-yet"
"""Dramatiq consumes every declared queue when its allow-list is empty: this name keeps the
list non-empty until the first pool arrives."""

MANAGED_BY = "agentrun-operator"
POOL_LABEL = "agentrun.io/workerpool"


# -- decisions -----------------------------------------------------------------------------------


Read = Callable[[str, str, str, str], "str | None"]


def resolve_env(pool: dict[str, Any], read: Read) -> tuple[dict[str, str], list[str]]:
    """The environment a pool's workers get from its ``env`` and ``envFrom``, and what could
    not be resolved. ``read(kind, namespace, name, key)`` returns a Secret's or ConfigMap's
    value (``key`` "" for all of them, as JSON), None when it is missing. ``fieldRef`` and
    ``resourceFieldRef`` describe a pod, which dev has not: they are reported, not set."""
    namespace = pool["metadata"]["namespace"]
    spec = pool.get("spec") or {}
    env: dict[str, str] = {}
    problems: list[str] = []
    for source in spec.get("envFrom") or []:
        for kind, ref_field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = source.get(ref_field)
            if not ref:
                continue
            found = read(kind, namespace, ref["name"], "")
            if found is None:
                if not ref.get("optional"):
                    problems.append(f"envFrom: {kind} {ref['name']!r} not found")
                continue
            prefix = source.get("prefix", "")
            env.update({prefix + k: v for k, v in json.loads(found).items()})
    for item in spec.get("env") or []:
        name = item["name"]
        if "value" in item or not item.get("valueFrom"):
            env[name] = str(item.get("value", ""))
            continue
        value_from = item["valueFrom"]
        for kind, ref_field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            ref = value_from.get(ref_field)
            if not ref:
                continue
            value = read(kind, namespace, ref["name"], ref["key"])
            if value is not None:
                env[name] = value
            elif not ref.get("optional"):
                problems.append(f"env {name}: key {ref['key']!r} of {kind} {ref['name']!r} not found")
            break
        else:
            problems.append(f"env {name}: only value, secretKeyRef and configMapKeyRef work in agentrun dev")
    return env, problems


def pool_settings(base: worker_settings.WorkerSettings, pool: dict[str, Any],
                  env: Mapping[str, str]) -> worker_settings.WorkerSettings:
    """The worker settings of a pool's messages: the pool's ``mcpServers`` (as the operator
    passes them in ``AGENTRUN_MCP_SERVERS``), and any ``AGENTRUN_*`` worker setting its env sets."""
    update: dict[str, Any] = {"mcp_servers": list((pool.get("spec") or {}).get("mcpServers") or [])}
    for name, value in env.items():
        field = name.removeprefix("AGENTRUN_").lower()
        if name.startswith("AGENTRUN_") and field in worker_settings.WorkerSettings.model_fields:
            try:
                update[field] = json.loads(value)
            except ValueError:
                update[field] = value
    return worker_settings.WorkerSettings.model_validate({**base.model_dump(), **update})


@dataclasses.dataclass(frozen=True)
class Plan:
    start: list[str]
    """Queues to start consuming (new pools, or pools applied again)."""
    refresh: list[str]
    """Queues whose pool changed (or whose env could not be resolved yet): settings again."""
    stop: list[str]
    """Queues of deleted pools."""


def plan(running: Mapping[str, str], pools: Mapping[str, str], unresolved: set[str]) -> Plan:
    """What to do, given the running queues and the pools' queues, each with the
    resourceVersion it was set up from, and the queues whose env is still incomplete."""
    return Plan(
        start=sorted(q for q in pools if q not in running),
        refresh=sorted(q for q in pools if q in running and (running[q] != pools[q] or q in unresolved)),
        stop=sorted(q for q in running if q not in pools),
    )


# -- effects ---------------------------------------------------------------------------------------


class DevWorkers:
    """One Dramatiq worker consuming the queue of every WorkerPool of the dev stack."""

    def __init__(self, config: settings.Settings, broker: dramatiq.Broker) -> None:
        runtime.install(config, broker)
        importlib.import_module("agentrun_worker.actors")
        broker.add_middleware(middleware.CurrentPool())
        self._broker = broker
        self._base = worker_settings.load()
        self._worker = dramatiq.Worker(broker, queues={_NO_QUEUE}, worker_threads=WORKER_THREADS,
                                       worker_timeout=100)
        self._api = lightkube.Client(field_manager="agentrun-dev")  # KUBECONFIG: the dev stack's emulator
        self._running: dict[str, str] = {}  # queue -> resourceVersion of its pool
        self.metrics_url: str | None = None  # where the workers' /metrics is served (start())
        self._keys: dict[str, tuple[str, str]] = {}  # queue -> (namespace, pool)
        self._unresolved: dict[str, list[str]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentrun-dev-pools", daemon=True)

    def start(self) -> None:
        self._worker.start()
        self.sync()  # the pools that exist now have their workers before start returns
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(10)
        self._worker.stop()
        self._api.close()

    def _loop(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            try:
                self.sync()
            except Exception as exc:  # the API emulator stopping, a hiccup: try again next pass
                logger.warning("dev.pools_sync_failed", error=str(exc))

    def sync(self) -> None:
        pools = {message.queue_name(p["metadata"]["namespace"], p["metadata"]["name"]): p
                 for p in (kube.to_dict(o) for o in self._api.list(kube.WorkerPool, namespace="*"))}
        todo = plan(self._running, {q: str(p["metadata"].get("resourceVersion")) for q, p in pools.items()},
                    set(self._unresolved))
        for queue in todo.start + todo.refresh:
            self._configure(queue, pools[queue])
        for queue in todo.start:
            self._consume(queue)
        for queue in todo.stop:
            self._pause(queue)
        self._report_ready()

    def _configure(self, queue: str, pool: dict[str, Any]) -> None:
        meta = pool["metadata"]
        env, problems = resolve_env(pool, self._read)
        runtime.use_pool(queue, pool_settings(self._base, pool, env), env)
        if problems and self._unresolved.get(queue) != problems:
            logger.warning("dev.pool_env_incomplete", namespace=meta["namespace"], pool=meta["name"],
                           problems=problems, hint="runs that need these variables fail naming them")
        if problems:
            self._unresolved[queue] = problems
        else:
            self._unresolved.pop(queue, None)
        self._running[queue] = str(meta.get("resourceVersion"))
        self._keys[queue] = (meta["namespace"], meta["name"])

    def _consume(self, queue: str) -> None:
        namespace, name = self._keys[queue]
        assert self._worker.consumer_whitelist is not None
        self._worker.consumer_whitelist.add(queue)
        if queue not in self._broker.get_declared_queues():
            self._broker.declare_queue(queue)  # the worker adds its consumers as it is declared
        for consumer_queue, delay in ((queue, False), (dramatiq.common.dq_name(queue), True)):
            consumer = self._worker.consumers.get(consumer_queue)
            if consumer is None:
                self._worker._add_consumer(consumer_queue, delay=delay)
            else:
                consumer.resume()  # the pool was deleted and applied again
        logger.info("dev.pool_worker_started", namespace=namespace, pool=name, queue=queue)

    def _pause(self, queue: str) -> None:
        namespace, name = self._keys.pop(queue)
        self._running.pop(queue, None)
        self._unresolved.pop(queue, None)
        for consumer_queue in (queue, dramatiq.common.dq_name(queue)):
            consumer = self._worker.consumers.get(consumer_queue)
            if consumer is not None:
                consumer.pause()
        runtime.drop_pool(queue)
        logger.info("dev.pool_worker_stopped", namespace=namespace, pool=name, queue=queue)

    def _read(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        resource = lightkube.resources.core_v1.Secret if kind == "Secret" else lightkube.resources.core_v1.ConfigMap
        try:
            obj = kube.to_dict(self._api.get(resource, name, namespace=namespace))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                return None
            raise
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        if not key:
            return json.dumps(data)
        return data.get(key)

    def _report_ready(self) -> None:
        """``status.readyReplicas: 1`` on the Deployment of each pool dev runs a worker for."""
        serving = set(self._keys.values())
        listed = self._api.list(lightkube.resources.apps_v1.Deployment, namespace="*",
                                labels={"app.kubernetes.io/managed-by": MANAGED_BY})
        for deployment in (kube.to_dict(d) for d in listed):
            meta = deployment["metadata"]
            pool = (meta.get("labels") or {}).get(POOL_LABEL)
            workers = 1 if (meta["namespace"], pool) in serving else 0
            status = deployment.get("status") or {}
            if status.get("readyReplicas", 0) == workers and status.get("replicas", 0) == workers:
                continue
            try:
                self._api.patch(lightkube.resources.apps_v1.Deployment.Status, meta["name"],
                                {"status": {"replicas": workers, "readyReplicas": workers, "availableReplicas": workers,
                                            "updatedReplicas": workers, "observedGeneration": meta.get("generation")}},
                                namespace=meta["namespace"], patch_type=lightkube.types.PatchType.MERGE)
            except kube.ApiError as exc:
                if not kube.is_not_found(exc):  # deleted with its pool meanwhile: nothing to report
                    raise


def start(config: settings.Settings, broker: dramatiq.Broker) -> DevWorkers:
    workers = DevWorkers(config, broker)
    workers.metrics_url = metrics.serve_in_process()
    workers.start()
    return workers
