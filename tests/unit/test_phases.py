"""The lifecycle rule: a phase never moves backwards; terminal phases are final."""

from __future__ import annotations

import itertools

import pytest

from agentrun.phases import TERMINAL, Phase, is_terminal, may_transition

FORWARD = [Phase.PENDING, Phase.QUEUED, Phase.RUNNING, Phase.STOPPING]


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(FORWARD, 2)))
def test_forward_moves_are_allowed_and_backward_ones_refused(a: Phase, b: Phase) -> None:
    assert may_transition(a, 1, b, 1)
    assert not may_transition(b, 1, a, 1)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("new", list(Phase))
@pytest.mark.parametrize("attempt_delta", [-1, 0, 1])
def test_terminal_phases_never_change(terminal: Phase, new: Phase, attempt_delta: int) -> None:
    assert not may_transition(terminal, 2, new, 2 + attempt_delta)


def test_a_late_queued_never_overwrites_running() -> None:
    assert not may_transition(Phase.RUNNING, 1, Phase.QUEUED, 1)


def test_a_new_attempt_may_start_over_from_queued() -> None:
    assert may_transition(Phase.RUNNING, 1, Phase.QUEUED, 2)
    assert not may_transition(Phase.QUEUED, 2, Phase.RUNNING, 1)


def test_the_same_phase_may_be_reasserted_within_an_attempt() -> None:
    assert may_transition(Phase.RUNNING, 1, Phase.RUNNING, 1)


def test_unset_phase_ranks_lowest() -> None:
    assert may_transition(None, 0, Phase.QUEUED, 1)
    assert may_transition("", 0, Phase.FAILED, 1)
    assert not is_terminal(None)
    assert is_terminal("Stopped")
