"""Process-wide state of a worker: settings, broker and the clients of the event loop.

``actors`` asks for the broker when it declares the actor; ``execution`` asks for the
clients. Dramatiq's AsyncIO middleware runs every async actor of a process on one event
loop thread, so the clients are built once, lazily, on that loop. ``agentrun dev`` calls
:func:`install` first to share its in-process stub broker.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
from collections.abc import Mapping

import dramatiq
import lightkube
import redis.asyncio as aioredis
import structlog

from agentrun import broker as brokers
from agentrun import kube, log, settings, store
from agentrun_worker import config as worker_settings
from agentrun_worker import providers

logger = structlog.get_logger(__name__)

_config: settings.Settings | None = None
_worker_config: worker_settings.WorkerSettings | None = None
_broker: dramatiq.Broker | None = None
_clients: Clients | None = None
_lock: asyncio.Lock | None = None
_pools: dict[str, tuple[worker_settings.WorkerSettings, Mapping[str, str]]] = {}
_queue: contextvars.ContextVar[str | None] = contextvars.ContextVar("queue", default=None)


@dataclasses.dataclass
class Clients:
    redis: aioredis.Redis
    api: lightkube.AsyncClient
    store: store.Store


def install(config: settings.Settings, dramatiq_broker: dramatiq.Broker | None = None) -> None:
    global _config, _broker
    _config = config
    _broker = dramatiq_broker


def config() -> settings.Settings:
    global _config
    if _config is None:
        _config = settings.load()
        log.configure(_config.log_level, _config.log_format)
    return _config


def use_pool(queue: str, settings: worker_settings.WorkerSettings, env: Mapping[str, str]) -> None:
    """Give the messages of ``queue`` their pool's settings and environment (``agentrun dev``,
    which serves every pool from one process)."""
    _pools[queue] = (settings, dict(env))


def drop_pool(queue: str) -> None:
    _pools.pop(queue, None)


def enter_queue(queue: str) -> None:
    """The message about to be processed came from ``queue``: its pool's settings and
    environment apply to it (and to the tasks it starts, which copy the context)."""
    _queue.set(queue)
    found = _pools.get(queue)
    worker_settings.pool_env.set(found[1] if found else None)


def worker_config() -> worker_settings.WorkerSettings:
    """The worker's own settings (``agentrun_worker.config``); in ``agentrun dev``, those of the
    pool whose message is being processed."""
    global _worker_config
    queue = _queue.get()
    if queue is not None and queue in _pools:
        return _pools[queue][0]
    if _worker_config is None:
        _worker_config = worker_settings.load()
    return _worker_config


def broker() -> dramatiq.Broker:
    global _broker
    if _broker is None:
        _broker = brokers.setup(config())
    return _broker


async def clients() -> Clients:
    global _clients, _lock
    if _clients is not None:
        return _clients
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        if _clients is None:
            cfg = config()
            if not cfg.redis_url:
                raise RuntimeError("AGENTRUN_REDIS_URL is not set: the worker needs Redis")
            db = store.from_settings(cfg, default_sqlite_path=os.path.join(cfg.state_dir, "agentrun.db"))
            await db.connect()
            await db.migrate()
            _clients = Clients(
                redis=aioredis.Redis.from_url(cfg.redis_url),
                api=kube.client(user_agent="agentrun-worker"),
                store=db,
            )
            logger.info(
                "worker.clients_ready",
                queue=cfg.queue,
                instance=cfg.instance_id,
                redis=log.redact_url(cfg.redis_url),
            )
    assert _clients is not None
    return _clients


async def close() -> None:
    """Close the clients (at worker shutdown, on the loop that made them)."""
    global _clients
    clients, _clients = _clients, None
    if clients is None:
        return
    await providers.close()
    await clients.store.close()
    await clients.redis.aclose()
    await clients.api.close()
