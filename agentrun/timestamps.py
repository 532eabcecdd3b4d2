"""Timestamps as the resources carry them: RFC 3339 in UTC, written and read one way.

Kubernetes writes second precision (``2025-01-01T00:00:00Z``); latency fields (``queuedAt``,
``startedAt``, ``finishedAt``) carry microseconds. Used by the operator, the worker, the
store and the CLI.
"""

from __future__ import annotations

import datetime


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def now() -> str:
    """An RFC 3339 UTC timestamp with second precision, as Kubernetes writes them."""
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


def now_precise() -> str:
    """RFC 3339 UTC with microseconds, for latency measurements (dispatch, start)."""
    return utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(value: object) -> datetime.datetime | None:
    """The moment of an RFC 3339 timestamp (``Z`` or an offset); None or "" stays None."""
    if value is None or value == "":
        return None
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def epoch(value: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp; None or "" stays None."""
    moment = parse(value)
    return None if moment is None else moment.timestamp()


def age_seconds(value: object, now: float) -> float | None:
    """Seconds from ``value`` to ``now`` (seconds since the epoch); None when unset."""
    then = epoch(value)
    return None if then is None else now - then
