"""The provider interface: one model turn, streamed as text deltas, maybe ending in tool calls.

Errors are named for what happens next: :class:`ProviderUnavailable` (no such model here:
the run fails at once) and :class:`ProviderError` (the model call failed: the run fails with
the provider's message; transient errors are retried inside the provider).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from agentrun import reasons
from agentrun_worker import context


class ProviderUnavailable(Exception):
    reason = reasons.Reason.PROVIDER_UNAVAILABLE


class ProviderError(Exception):
    reason = reasons.Reason.MODEL_ERROR


@dataclasses.dataclass
class ToolCall:
    """A function call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


@dataclasses.dataclass
class Turn:
    text: str
    finish: str  # "continue" (more turns follow), "complete" (the agent is done), "ask" (waits for the user)
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)


OnDelta = Callable[[str], Awaitable[None] | None]


class Provider(abc.ABC):
    @abc.abstractmethod
    async def turn(
        self,
        messages: list[dict[str, Any]],
        *,
        iteration: int,
        on_delta: OnDelta,
        tools: list[dict[str, Any]] | None = None,
    ) -> Turn:
        """Run one model turn over ``messages`` (Chat Completions format), calling ``on_delta``
        for each text chunk; ``tools`` are the function tools the model may call (their
        Chat Completions schemas)."""

    def partial_usage(self, messages: list[dict[str, Any]], streamed: str) -> tuple[int, int]:
        """``(input, output)`` tokens of a turn cut short after streaming ``streamed`` (a stop,
        a deadline, an error mid-answer), when the provider's own count never came: estimated
        from the prompt and the text (see ``agentrun_worker.context``)."""
        return sum(context.estimate(m) for m in messages), context.text_tokens(streamed)
