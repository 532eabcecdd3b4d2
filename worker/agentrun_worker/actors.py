"""The Dramatiq actor of the worker: ``dramatiq agentrun_worker.actors``.

The actor is declared on the queue of this worker's pool (``AGENTRUN_QUEUE``, set by the
pool's Deployment) and takes only ids and the resolved spec (see ``agentrun.message``).
It is idempotent: duplicate deliveries are recognised by the run's lease and state.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import dramatiq.middleware

from agentrun import message
from agentrun_worker import execution, middleware, runtime, shutdown, tracing

runtime.broker().add_middleware(middleware.CloseClients(), after=dramatiq.middleware.AsyncIO)
runtime.broker().add_middleware(shutdown.GracefulShutdown(runtime.worker_config().shutdown_grace_seconds))
tracing.setup()  # once per worker process: OpenTelemetry, Langfuse, Sentry as configured


@dramatiq.actor(
    actor_name=message.ACTOR_NAME,
    queue_name=runtime.config().queue,
    broker=runtime.broker(),
    max_retries=3,
    min_backoff=1_000,
    max_backoff=30_000,
)
async def execute_run(payload: dict[str, Any]) -> None:
    with tracing.reporting_errors():
        await execution.execute(payload)
