"""Redis key names of a run.

Every key of one run carries the run uid inside a Redis Cluster hash tag (``{uid}``), so all
keys of a run live in one slot and multi-key scripts and transactions work on a cluster.
Used by the operator (stop requests, lease checks), the worker and every stream reader.
"""

from __future__ import annotations

PREFIX = "agentrun"


def stream(uid: str) -> str:
    """Redis Stream of every event the run emits; the last entry is a terminal status."""
    return f"{PREFIX}:{{{uid}}}:stream"


def lease(uid: str) -> str:
    """Execution lease: ``SET NX PX`` holding the worker instance id, renewed while running."""
    return f"{PREFIX}:{{{uid}}}:lease"


def stop(uid: str) -> str:
    """Durable stop request; it outlives a worker that has not started yet."""
    return f"{PREFIX}:{{{uid}}}:stop"


def control(uid: str) -> str:
    """Pub/sub channel that wakes a running worker up for a stop request."""
    return f"{PREFIX}:{{{uid}}}:control"


def all_for(uid: str) -> tuple[str, ...]:
    return (stream(uid), lease(uid), stop(uid))
