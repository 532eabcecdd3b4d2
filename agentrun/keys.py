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


def waiting(uid: str) -> str:
    """When a delivery of a run last polled a busy thread (ms since the epoch); its expiry
    means the run no longer waits."""
    return f"{PREFIX}:{{{uid}}}:waiting"


def thread_owner(thread_id: str) -> str:
    """The run that holds a conversation thread (``<uid> <namespace>/<name>``), renewed with
    its lease. The thread id is the hash tag: a thread's keys share one slot."""
    return f"{PREFIX}:thread:{{{thread_id}}}:owner"


def thread_line(thread_id: str) -> str:
    """Sorted set of the runs waiting for a busy thread, scored by when they were queued."""
    return f"{PREFIX}:thread:{{{thread_id}}}:line"


def all_for(uid: str) -> tuple[str, ...]:
    return (stream(uid), lease(uid), stop(uid))
