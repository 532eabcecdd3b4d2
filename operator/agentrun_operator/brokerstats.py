"""Queue depths from the RabbitMQ management API, to cross-check the operator's own count.

The autoscaler sizes a pool from the runs it knows (queued + running AgentRuns). The broker
may hold more: messages published by something else, re-deliveries, runs whose resource is
gone. Where the management API is reachable (``AGENTRUN_RABBITMQ_MANAGEMENT_URL``), the
autoscaler takes the larger of its count and the queue's ready + unacknowledged messages.
Unacknowledged messages are the ones workers hold (running or prefetched): a passive queue
declare reports only ready ones, which is why KEDA's AMQP trigger scales busy pools in.

One ``GET /api/queues/<vhost>`` (only the three columns needed) serves every pool of the
vhost, at most every ``broker_stats_interval_seconds``; RabbitMQ itself refreshes these
figures every 5 s (``collect_statistics_interval``). A failure is logged with the URL's
password hidden and the autoscaler goes on with its own count.
"""

from __future__ import annotations

import time
import urllib.parse

import httpx
import structlog

from agentrun import log
from agentrun_operator import metrics

logger = structlog.get_logger(__name__)


class BrokerStats:
    """Cached ``{queue: ready + unacknowledged}`` of one vhost."""

    def __init__(self, management_url: str, broker_url: str | None, *, interval_seconds: float) -> None:
        parsed = urllib.parse.urlsplit(management_url)
        host = parsed.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parsed.port}" if parsed.port else host
        # credentials go in the Authorization header, never in a URL that could be logged
        self._base = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))
        auth = (urllib.parse.unquote(parsed.username or "guest"), urllib.parse.unquote(parsed.password or "guest"))
        self._client = httpx.AsyncClient(auth=auth, timeout=5.0)
        self._vhost = vhost_of(broker_url)
        self._interval = interval_seconds
        self._fetched_at = float("-inf")
        self._depths: dict[str, tuple[int, int]] = {}
        self._shown = log.redact_url(management_url)

    async def depths(self) -> dict[str, tuple[int, int]]:
        """``{queue: (ready, unacknowledged)}``, refreshed when older than the interval."""
        now = time.monotonic()
        if now - self._fetched_at < self._interval:
            return self._depths
        self._fetched_at = now
        url = f"{self._base}/api/queues/{urllib.parse.quote(self._vhost, safe='')}"
        try:
            response = await self._client.get(url, params={"columns": "name,messages_ready,messages_unacknowledged"})
            response.raise_for_status()
            self._depths = {
                str(q["name"]): (int(q.get("messages_ready") or 0), int(q.get("messages_unacknowledged") or 0))
                for q in response.json()
            }
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            metrics.RECONCILE_ERRORS.labels("broker_stats").inc()
            logger.warning("broker_stats.failed", url=self._shown, error=type(exc).__name__)
            self._depths = {}
        return self._depths

    async def close(self) -> None:
        await self._client.aclose()


def vhost_of(broker_url: str | None) -> str:
    """The vhost of an AMQP URL: its path without the leading slash, ``/`` when empty."""
    path = urllib.parse.urlsplit(broker_url or "").path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
