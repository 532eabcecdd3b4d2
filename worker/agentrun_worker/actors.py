"""The Dramatiq actor of the worker: ``dramatiq agentrun_worker.actors``.

The actor is declared on the queue of this worker's pool (``AGENTRUN_QUEUE``, set by the
pool's Deployment) and takes only ids and the resolved spec (see ``agentrun.message``).
It is idempotent: duplicate deliveries are recognised by the run's lease and state.

Dramatiq's time limit of a message follows the run's ``timeoutSeconds`` plus a margin
(``agentrun.broker.build_message``), so the worker's own deadline always ends the run first,
with ``DeadlineExceeded``. Should the limit ever strike (a run without ``timeoutSeconds``
past 24 h), the message is not retried (``throws``): the run's lease is gone, and recovering
it is the operator's job (a new attempt, or ``Failed``) — a Dramatiq retry beside it could
execute the run a second time.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import dramatiq.middleware

from agentrun import message
from agentrun_worker import execution, metrics, middleware, runtime, shutdown, tracing

runtime.broker().add_middleware(middleware.CloseClients(), after=dramatiq.middleware.AsyncIO)
runtime.broker().add_middleware(shutdown.GracefulShutdown(runtime.worker_config().shutdown_grace_seconds))
runtime.broker().add_middleware(metrics.Metrics(runtime.worker_config().metrics_port))
runtime.broker().add_middleware(middleware.ErrorReporting())  # backends set up per process; escaped errors reported


@dramatiq.actor(
    actor_name=message.ACTOR_NAME,
    queue_name=runtime.config().queue,
    broker=runtime.broker(),
    max_retries=3,
    min_backoff=1_000,
    max_backoff=30_000,
    throws=(dramatiq.middleware.TimeLimitExceeded,),
)
async def execute_run(payload: dict[str, Any]) -> None:
    with tracing.identified():  # what escapes carries the run's identity to ErrorReporting
        await execution.execute(payload)
