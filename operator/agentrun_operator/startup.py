"""Operator start-up and clean-up: settings, kopf configuration and clients in ``memo``.

kopf calls these before any resource handler. The operator's state is one typed
:class:`agentrun_operator.memos.Memo` in kopf's ``memo`` (handlers read it with
``memos.of(memo)``): ``config`` (settings), ``operator_config`` (the operator's own settings),
``broker`` (Dramatiq broker; publishing blocks, so callers use a thread), ``redis`` (stop
requests, lease checks), ``api`` (lightkube client for compare-and-swap status writes),
``store`` (the database, for runs the operator ends itself), ``metrics_server``
(``/metrics``), and the two background tasks cancelled on clean-up: ``scan_task``, the
recovery scan (:mod:`agentrun_operator.scanning`), and ``autoscale_task``, the WorkerPool
autoscaler (:mod:`agentrun_operator.scaling`).
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
from agentrun_operator import brokerstats, decisions, memos, metrics, scaling, scanning
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
    run_views: kopf.Index[str, decisions.RunView] = kwargs["run_views"]
    run_phases: kopf.Index[tuple[str, str, str], str] = kwargs["run_phases"]
    pool_specs: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["pool_specs"]
    pool_deployments: kopf.Index[tuple[str, str], tuple[int, int, int]] = kwargs["pool_deployments"]
    given = memos.inputs(memo)
    config = given.config or agentrun_settings.load()
    if not given.broker_shared:
        log.configure(config.log_level, config.log_format)
    configure_kopf(settings)
    db = None
    if store.configured(config):
        db = store.from_settings(config)
        await db.connect()
    state = memos.Memo(
        config=config,
        operator_config=given.operator_config or operator_config.load(),
        broker=given.broker or broker.make_broker(config),
        broker_shared=given.broker_shared,
        api=kube.client(user_agent="agentrun-operator"),
        redis=aioredis.Redis.from_url(config.redis_url) if config.redis_url else None,
        store=db,
    )
    memos.install(memo, state)
    op = state.operator_config
    if op.metrics_port:
        state.metrics_server = metrics.serve(op.metrics_port, run_phases)
    if op.rabbitmq_management_url:
        state.broker_stats = brokerstats.BrokerStats(op.rabbitmq_management_url, config.broker_url,
                                                     interval_seconds=op.broker_stats_interval_seconds)
    state.autoscaler = scaling.Autoscaler(api=state.api, pools=pool_specs, run_phases=run_phases,
                                          pool_deployments=pool_deployments, op=op,
                                          pool_pods=kwargs["pool_pods"], run_pods=kwargs["run_pods"],
                                          broker_stats=state.broker_stats)
    loop = asyncio.get_running_loop()
    state.autoscale_task = loop.create_task(state.autoscaler.run_forever(), name="agentrun-autoscale")
    if state.redis is not None:
        scanner = scanning.Scanner(
            runs=run_views, pools=kwargs["pool_queues"], api=state.api, redis=state.redis,
            dramatiq_broker=state.broker, db=state.store, settings=config, op=op,
        )
        state.scan_task = loop.create_task(scanner.run_forever(), name="agentrun-scan")
    else:
        logger.warning("operator.no_scan", why="no Redis configured (AGENTRUN_REDIS_URL): lost workers go unnoticed")
    metrics.LEADER.set(1)
    logger.info(
        "operator.started",
        broker=log.redact_url(config.broker_url) or "stub",
        redis=log.redact_url(config.redis_url),
        scan_interval_seconds=op.scan_interval_seconds,
        metrics_port=op.metrics_port or None,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    metrics.LEADER.set(0)
    state = memos.find(memo)
    if state is None:
        return
    for task in (state.scan_task, state.autoscale_task):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if state.broker_stats is not None:
        await state.broker_stats.close()
    if state.metrics_server is not None:
        state.metrics_server.close()
    if state.store is not None:
        await state.store.close()
    if state.redis is not None:
        await state.redis.aclose()
    await state.api.close()
    if not state.broker_shared:
        state.broker.close()
