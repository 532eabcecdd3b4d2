"""Graceful shutdown: runs in flight finish within a grace period or are handed back.

On SIGTERM Dramatiq's worker stops its worker threads from taking messages (prefetched
ones go back to the queue) and waits up to ``--worker-shutdown-timeout`` for the actors in
flight. :class:`GracefulShutdown` starts the grace timer (``AGENTRUN_SHUTDOWN_GRACE_SECONDS``)
on the event loop that runs the actors; a run that ends before it fires ends normally. When
it fires, ``execution`` hands every run still executing back: it cancels the agent loop,
marks the run's lease handed back (see ``leases``), publishes the run's message again and
returns, so Dramatiq acknowledges the old delivery. The next delivery — on another worker —
passes admission (same attempt, phase ``Running``, lease handed back) and resumes the run
after its last completed turn. Nothing is written as final, so nothing is left ``Running``
without a message to run it.

Dramatiq's idle worker threads notice the shutdown only when their poll of the work queue
times out (``worker_timeout``, 1 s), so one of them may still take a message the consumer
fetched meanwhile — even the copy just handed back. A message that starts while the worker
is draining is therefore handed back at once, untouched, and every hand-back is published
with a delay (``AGENTRUN_HANDBACK_DELAY_SECONDS``) longer than that poll.

If the process dies before publishing, the old delivery is never acknowledged and RabbitMQ
delivers it again, which resumes the run the same way.
"""

from __future__ import annotations

import asyncio

import dramatiq
import dramatiq.asyncio
import structlog

logger = structlog.get_logger(__name__)

_draining: asyncio.Event | None = None
_handback: asyncio.Event | None = None


def draining() -> asyncio.Event:
    """Set (on the worker's event loop) as soon as the worker starts shutting down."""
    global _draining
    if _draining is None:
        _draining = asyncio.Event()
    return _draining


def handback_requested() -> asyncio.Event:
    """Set (on the worker's event loop) when the runs in flight must be handed back."""
    global _handback
    if _handback is None:
        _handback = asyncio.Event()
    return _handback


def begin(grace_seconds: float) -> None:
    """Start the grace period; called on the event loop when the worker starts shutting down."""
    logger.info("worker.shutting_down", grace_seconds=grace_seconds)
    draining().set()
    asyncio.get_running_loop().call_later(max(0.0, grace_seconds), handback_requested().set)


class GracefulShutdown(dramatiq.Middleware):
    """Starts the grace period of the runs in flight when the Dramatiq worker shuts down."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = dramatiq.asyncio.get_event_loop_thread()
        if loop_thread is not None and loop_thread.loop.is_running():
            loop_thread.loop.call_soon_threadsafe(begin, self.grace_seconds)
