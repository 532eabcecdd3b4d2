"""Worker middleware: reporting what escapes a run and setting up the trace backends
(``ErrorReporting``); closing the worker's clients when the worker shuts down; in
``agentrun dev``, giving each message its pool's settings (``CurrentPool``).

The clients (Redis, Kubernetes, the store) live on Dramatiq's event loop thread. After the
worker threads have finished their runs, they are closed on that loop — before the AsyncIO
middleware stops it: Dramatiq runs ``after_*`` hooks in reverse order, which is why this
middleware is added *after* AsyncIO. Without this an
open SQLite connection thread keeps the process from exiting. Then the trace exporters are
flushed (``tracing``).
"""

from __future__ import annotations

import dramatiq
import dramatiq.asyncio
import dramatiq.broker
import dramatiq.common

from agentrun_worker import runtime, tracing


class ErrorReporting(dramatiq.Middleware):
    """Error reporting and trace set-up, per worker process rather than per run.

    The backends (OpenTelemetry, Langfuse, Sentry) are configured when a worker process boots.
    An infrastructure error that escapes the actor goes to Sentry with the run's identity,
    which the actor stamped on it (``tracing.identified``); an agent's own failure (it names
    its reason) and a cancellation are outcomes, not faults. The per-step spans stay in the
    agent loop: they nest inside the run's coroutine, which a middleware hook does not run in.
    """

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        tracing.setup()

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy, *,
                              result: object | None = None, exception: BaseException | None = None) -> None:
        if exception is not None and not tracing.expected(exception):
            tracing.capture(exception)


class CloseClients(dramatiq.Middleware):
    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = dramatiq.asyncio.get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(runtime.close())
        tracing.shutdown()  # what the trace exporters still buffer goes out before the process exits


class CurrentPool(dramatiq.Middleware):
    """``agentrun dev`` serves every WorkerPool from one process: each message runs with the
    settings and environment of the pool whose queue it came from (``runtime.use_pool``).
    Set on the worker thread before the actor is called; the actor's coroutine copies it."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        runtime.enter_queue(dramatiq.common.q_name(message.queue_name))
