"""AgentRun handlers: dispatch new runs and forward stop requests.

Handlers stay small: they read the body, call a service module and let kopf record progress.
"""

from __future__ import annotations

from typing import Any

import kopf
import structlog

from agentrun import control, phases
from agentrun_operator import dispatching

logger = structlog.get_logger(__name__)

RESOURCE = ("agentrun.io", "v1alpha1", "agentruns")


@kopf.on.create(*RESOURCE)
async def dispatch_run(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    pool_queues: kopf.Index[tuple[str, str], str] = kwargs["pool_queues"]
    await dispatching.dispatch(
        api=memo.api,
        dramatiq_broker=memo.broker,
        pools=pool_queues,
        body=body,
        pool_wait_seconds=memo.config.pool_wait_seconds,
    )


@kopf.on.field(*RESOURCE, field="spec.stop", value=True)
async def stop_run(*, body: kopf.Body, uid: str, status: kopf.Status, memo: Any, **_: Any) -> None:
    """``spec.stop: true`` becomes a durable stop request the worker honours, even later."""
    if phases.is_terminal(status.get("phase")):
        return
    if memo.redis is None:
        raise kopf.PermanentError("no Redis configured (AGENTRUN_REDIS_URL): cannot deliver a stop request")
    await control.request_stop(memo.redis, uid, ttl_seconds=memo.config.key_ttl_seconds, reason="StopRequested")
    kopf.info(body, reason="StopRequested", message="stop requested")
    logger.info("run.stop_requested", run_id=uid)
