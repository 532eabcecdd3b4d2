"""Operator start-up and clean-up: settings, kopf configuration and clients in ``memo``.

kopf calls these before any resource handler. ``memo.config`` (settings), ``memo.broker``
(Dramatiq broker; publishing blocks, so callers use a thread), ``memo.redis`` (stop
requests) and ``memo.api`` (lightkube client for compare-and-swap status writes).
"""

from __future__ import annotations

from typing import Any

import kopf
import redis.asyncio as aioredis
import structlog

from agentrun import broker, kube, log
from agentrun import settings as agentrun_settings

logger = structlog.get_logger(__name__)


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    # kopf keeps its progress in annotations: the AgentRun status schema is strict and
    # belongs to agentrun. No finalizers are added (there are no deletion handlers).
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="agentrun.io")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="agentrun.io", key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = "agentrun.io/finalizer"
    # Reconnect watches regularly: a silently dropped watch stream is never noticed otherwise.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 10
    kopf_settings.posting.level = 20  # INFO: phase changes become Events
    kopf_settings.batching.worker_limit = 1000
    kopf_settings.batching.idle_timeout = 30.0
    kopf_settings.execution.max_workers = 32


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = getattr(memo, "config", None) or agentrun_settings.load()
    if not getattr(memo, "broker_shared", False):
        log.configure(config.log_level, config.log_format)
    configure_kopf(settings)
    memo.config = config
    if getattr(memo, "broker", None) is None:
        memo.broker = broker.make_broker(config)
    memo.redis = aioredis.Redis.from_url(config.redis_url) if config.redis_url else None
    memo.api = kube.client()
    logger.info(
        "operator.started",
        broker=log.redact_url(config.broker_url) or "stub",
        redis=log.redact_url(config.redis_url),
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "redis", None) is not None:
        await memo.redis.aclose()
    if getattr(memo, "api", None) is not None:
        await memo.api.close()
    if getattr(memo, "broker", None) is not None and not getattr(memo, "broker_shared", False):
        memo.broker.close()

