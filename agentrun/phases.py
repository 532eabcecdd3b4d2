"""Run phases and the one rule about them: a phase never moves backwards.

Used by the operator (``Pending``/``Queued``), the worker (``Running`` onwards) and the store,
so that the custom resource and the database apply the same ordering. A transition is
identified by ``(attempt, rank)``: a retry after a lost worker starts a new attempt and may go
back to ``Queued``; within an attempt the rank only grows; a terminal phase is final.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    STOPPING = "Stopping"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"


TERMINAL: frozenset[Phase] = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.STOPPED})
"""Final: nothing changes a run in these phases again."""

UNSTARTED: frozenset[Phase] = frozenset({Phase.PENDING, Phase.QUEUED})
"""Waiting for a worker: the operator owns these (dispatch, re-publish, deadline, pool gone)."""

ACTIVE: frozenset[Phase] = frozenset({Phase.RUNNING, Phase.STOPPING})
"""A worker holds the run (its lease): the recovery scan checks these for lost workers."""

_RANK: dict[Phase, int] = {
    Phase.PENDING: 0,
    Phase.QUEUED: 1,
    Phase.RUNNING: 2,
    Phase.STOPPING: 3,
    Phase.SUCCEEDED: 4,
    Phase.FAILED: 4,
    Phase.STOPPED: 4,
}


def rank(phase: Phase | str | None) -> int:
    """The position of a phase in the lifecycle; an unset phase ranks below ``Pending``."""
    if phase is None or phase == "":
        return -1
    return _RANK[Phase(phase)]


def is_terminal(phase: Phase | str | None) -> bool:
    return phase is not None and phase != "" and Phase(phase) in TERMINAL


def is_active(phase: Phase | str | None) -> bool:
    """Running or Stopping: a worker executes it."""
    return phase in ACTIVE


def is_unstarted(phase: Phase | str | None) -> bool:
    """Pending or Queued: no worker has it yet."""
    return phase in UNSTARTED


def may_transition(
    current: Phase | str | None,
    current_attempt: int,
    new: Phase | str,
    new_attempt: int,
) -> bool:
    """Whether ``current`` (at ``current_attempt``) may become ``new`` (at ``new_attempt``).

    Terminal phases never change. A newer attempt may start over from any non-terminal
    phase. Within the same attempt the rank must strictly grow, except that a phase may be
    re-asserted by itself (idempotent writes are allowed, so retries are harmless).
    """
    if is_terminal(current):
        return False
    if new_attempt > current_attempt:
        return True
    if new_attempt < current_attempt:
        return False
    if current is not None and current != "" and Phase(current) == Phase(new):
        return True
    return rank(new) > rank(current)
