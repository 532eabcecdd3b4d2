"""Operator start-up and clean-up: settings, kopf configuration and clients in ``memo``.

kopf calls these before any resource handler. ``memo.config`` (settings), ``memo.operator_config``
(the operator's own settings), ``memo.broker`` (Dramatiq broker; publishing blocks, so callers
use a thread), ``memo.redis`` (stop requests, lease checks), ``memo.api`` (lightkube client for
compare-and-swap status writes), ``memo.store`` (the database, for runs the operator ends
itself), ``memo.metrics_server`` (``/metrics``), and the two background tasks cancelled on
clean-up: ``memo.scan_task``, the recovery scan (:mod:`agentrun_operator.scanning`), and
``memo.autoscale_task``, the WorkerPool autoscaler (:mod:`agentrun_operator.scaling`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf
import redis.asyncio as aioredis
import structlog

from agentrun import broker, kube, log, store
from agentrun import settings as agentrun_settings
from agentrun_operator import brokerstats, metrics, scaling, scanning
from agentrun_operator import config as operator_config

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
    # One worker task per object with events in flight. A worker stays for idle_timeout after
    # its last event, and new objects wait for a free one: 1,000 workers kept 30 s each capped
    # dispatch at ~33 runs/s (bench scale). 2,000 workers idle for 2 s allow ~1,000 runs/s and
    # bound memory when 10,000 runs arrive at once.
    kopf_settings.queueing.worker_limit = 2000
    kopf_settings.queueing.idle_timeout = 2.0
    kopf_settings.execution.max_workers = 32


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    run_views: kopf.Index[str, scanning.RunView] = kwargs["run_views"]
    run_phases: kopf.Index[tuple[str, str, str], str] = kwargs["run_phases"]
    pool_specs: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["pool_specs"]
    pool_deployments: kopf.Index[tuple[str, str], tuple[int, int, int]] = kwargs["pool_deployments"]
    config = getattr(memo, "config", None) or agentrun_settings.load()
    if not getattr(memo, "broker_shared", False):
        log.configure(config.log_level, config.log_format)
    configure_kopf(settings)
    memo.config = config
    if getattr(memo, "broker", None) is None:
        memo.broker = broker.make_broker(config)
    memo.redis = aioredis.Redis.from_url(config.redis_url) if config.redis_url else None
    memo.api = kube.client(user_agent="agentrun-operator")
    memo.operator_config = getattr(memo, "operator_config", None) or operator_config.load()
    memo.store = None
    if store.configured(config):
        memo.store = store.from_settings(config)
        await memo.store.connect()
    memo.metrics_server = None
    if memo.operator_config.metrics_port:
        memo.metrics_server = metrics.serve(memo.operator_config.metrics_port, run_phases)
    memo.broker_stats = None
    if memo.operator_config.rabbitmq_management_url:
        memo.broker_stats = brokerstats.BrokerStats(
            memo.operator_config.rabbitmq_management_url, config.broker_url,
            interval_seconds=memo.operator_config.broker_stats_interval_seconds)
    autoscaler = scaling.Autoscaler(api=memo.api, pools=pool_specs, run_phases=run_phases,
                                    pool_deployments=pool_deployments, op=memo.operator_config,
                                    pool_pods=kwargs["pool_pods"], run_pods=kwargs["run_pods"],
                                    broker_stats=memo.broker_stats)
    memo.autoscaler = autoscaler
    memo.autoscale_task = asyncio.get_running_loop().create_task(autoscaler.run_forever(), name="agentrun-autoscale")
    memo.scan_task = None
    if memo.redis is not None:
        scanner = scanning.Scanner(
            runs=run_views, pools=kwargs["pool_queues"], api=memo.api, redis=memo.redis,
            dramatiq_broker=memo.broker, db=memo.store,
            settings=config, op=memo.operator_config,
        )
        memo.scan_task = asyncio.get_running_loop().create_task(scanner.run_forever(), name="agentrun-scan")
    else:
        logger.warning("operator.no_scan", why="no Redis configured (AGENTRUN_REDIS_URL): lost workers go unnoticed")
    metrics.LEADER.set(1)
    logger.info(
        "operator.started",
        broker=log.redact_url(config.broker_url) or "stub",
        redis=log.redact_url(config.redis_url),
        scan_interval_seconds=memo.operator_config.scan_interval_seconds,
        metrics_port=memo.operator_config.metrics_port or None,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    metrics.LEADER.set(0)
    for name in ("scan_task", "autoscale_task"):
        task = getattr(memo, name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if getattr(memo, "broker_stats", None) is not None:
        await memo.broker_stats.close()
    if getattr(memo, "metrics_server", None) is not None:
        memo.metrics_server.close()
    if getattr(memo, "store", None) is not None:
        await memo.store.close()
    if getattr(memo, "redis", None) is not None:
        await memo.redis.aclose()
    if getattr(memo, "api", None) is not None:
        await memo.api.close()
    if getattr(memo, "broker", None) is not None and not getattr(memo, "broker_shared", False):
        memo.broker.close()

