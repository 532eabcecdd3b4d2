"""Retries of store operations when the database is briefly out of reach.

:func:`agentrun.store.from_settings` wraps the configured backend in a :class:`RetryingStore`,
so the worker and the operator ride out a database restart, a failover or a dropped
connection instead of failing a run that did nothing wrong. The policy is tenacity's:
exponential backoff with full jitter (so workers that lost the database together do not
return together), bounded in total time.

What is retried, and what never is:

- Only :class:`agentrun.store.base.Unavailable`: the backends raise it for infrastructure
  errors alone (connection refused or reset, timeouts, HTTP 5xx from Supabase, serialization
  failures and deadlocks). A constraint violation, bad input or a refused key is a plain
  :class:`~agentrun.store.base.StoreError` and fails at once; so does an agent's own failure,
  which never reaches the store as an error at all.
- A transition that *loses* its compare-and-set returns ``False``: that is an answer, not an
  error, and is never retried.
- Every operation is safe to repeat. ``add_message`` gets its id before the first try, so a
  retry after a lost reply finds the stored message instead of adding a second one.
  ``transition`` after a lost reply may be refused because the first try applied (a terminal
  phase is final): when a try failed and the last one was refused, the row is read back, and
  the run being at exactly that phase and attempt counts as applied.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import tenacity

from agentrun.store import base

logger = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    total_seconds: float = 60.0
    """No new try starts later than this after the first (seconds). 60 s rides out a managed
    database's failover (typically 20–40 s) and a Supabase gateway restart; a worker's lease
    lives in Redis and does not expire meanwhile."""

    initial_seconds: float = 0.2
    """Scale of the first waits: a try ``n`` waits a random time up to ``initial * 2**n``."""

    max_seconds: float = 5.0
    """Cap of one wait, so a returning database is noticed within seconds."""


class RetryingStore(base.Store):
    """Any store, with its operations retried on :class:`~agentrun.store.base.Unavailable`."""

    def __init__(self, inner: base.Store, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.backend = inner.backend

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r})"

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(base.Unavailable),
            stop=tenacity.stop_before_delay(self.policy.total_seconds),
            wait=tenacity.wait_random_exponential(multiplier=self.policy.initial_seconds, max=self.policy.max_seconds),
            before_sleep=lambda state: _log_retry(operation, self.inner.backend, state),
            reraise=True,
        )

        async def attempt() -> T:  # tenacity awaits only what a coroutine function returns
            return await call()

        result: T = await retrying(attempt)
        return result

    async def connect(self) -> None:
        await self._call("connect", self.inner.connect)

    async def close(self) -> None:
        await self.inner.close()

    async def migrate(self) -> list[str]:
        return await self._call("migrate", self.inner.migrate)

    async def ensure_thread(self, thread_id: str, *, namespace: str, metadata: dict[str, Any] | None = None) -> None:
        await self._call("ensure_thread",
                         lambda: self.inner.ensure_thread(thread_id, namespace=namespace, metadata=metadata))

    async def upsert_run(self, run: base.RunRecord) -> None:
        await self._call("upsert_run", lambda: self.inner.upsert_run(run))

    async def transition(
        self,
        run_id: str,
        status: str,
        *,
        attempt: int,
        reason: str | None = None,
        error: str | None = None,
        result: str | None = None,
        worker_instance: str | None = None,
        usage: dict[str, int] | None = None,
        started_at: datetime.datetime | None = None,
        finished_at: datetime.datetime | None = None,
    ) -> bool:
        failed = False

        async def once() -> bool:
            nonlocal failed
            try:
                return await self.inner.transition(
                    run_id, status, attempt=attempt, reason=reason, error=error, result=result,
                    worker_instance=worker_instance, usage=usage, started_at=started_at, finished_at=finished_at,
                )
            except base.Unavailable:
                failed = True
                raise

        applied = await self._call("transition", once)
        if not applied and failed:  # the failed try may have applied and lost only its reply
            current = await self.get_run(run_id)
            applied = current is not None and current.status == status and current.attempt == attempt
        return applied

    async def get_run(self, run_id: str) -> base.RunRecord | None:
        return await self._call("get_run", lambda: self.inner.get_run(run_id))

    async def list_runs(
        self,
        *,
        namespace: str | None = None,
        thread_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[base.RunRecord]:
        return await self._call("list_runs", lambda: self.inner.list_runs(
            namespace=namespace, thread_id=thread_id, status=status, limit=limit))

    async def add_message(
        self,
        thread_id: str,
        role: str,
        content: Any,
        *,
        run_id: str | None = None,
        message_id: str | None = None,
    ) -> base.MessageRecord:
        message_id = message_id or base.new_message_id()  # the same id on every try: idempotent
        return await self._call("add_message", lambda: self.inner.add_message(
            thread_id, role, content, run_id=run_id, message_id=message_id))

    async def list_messages(self, thread_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[base.MessageRecord]:
        return await self._call("list_messages",
                                lambda: self.inner.list_messages(thread_id, after_seq=after_seq, limit=limit))


def _log_retry(operation: str, backend: str, state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    logger.warning(
        "store.retry",
        operation=operation,
        backend=backend,
        attempt=state.attempt_number,
        wait_seconds=round(state.upcoming_sleep, 2),
        error=str(error),
    )
