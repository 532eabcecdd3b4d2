"""The agent loop: model turns until the agent completes, asks, or runs out of iterations.

Called by ``execution`` for one run. Every text chunk becomes an ``assistant`` stream event,
every finished turn a ``message`` event and a row in the thread's messages. The loop itself
knows nothing of leases, stop requests or status: cancelling its task stops it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agentrun import store, streams
from agentrun_worker.providers import base


@dataclasses.dataclass
class Outcome:
    result: str
    iterations: int
    input_tokens: int = 0
    output_tokens: int = 0
    reason: str = "Completed"  # Completed | AskedUser | MaxIterationsReached

    @property
    def usage(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens,
        }


class AgentLoop:
    def __init__(
        self,
        *,
        provider: base.Provider,
        writer: streams.StreamWriter,
        db: store.Store,
        run_id: str,
        attempt: int,
        thread_id: str,
        agent: dict[str, Any],
        history: list[dict[str, Any]],
    ) -> None:
        self._provider = provider
        self._writer = writer
        self._db = db
        self._run_id = run_id
        self._attempt = attempt
        self._thread_id = thread_id
        self._max_iterations = int(agent.get("maxIterations", 100))
        self._messages: list[dict[str, Any]] = []
        if agent.get("systemPrompt"):
            self._messages.append({"role": "system", "content": agent["systemPrompt"]})
        self._messages.extend(history)
        self.outcome = Outcome(result="", iterations=0)

    async def run(self) -> Outcome:
        outcome = self.outcome
        for iteration in range(1, self._max_iterations + 1):
            outcome.iterations = iteration

            def on_delta(chunk: str, iteration: int = iteration) -> None:
                self._writer.emit({"type": streams.ASSISTANT, "delta": chunk, "iteration": iteration})

            turn = await self._provider.turn(self._messages, iteration=iteration, on_delta=on_delta)
            outcome.input_tokens += turn.input_tokens
            outcome.output_tokens += turn.output_tokens
            outcome.result = turn.text
            message = {"role": "assistant", "content": turn.text}
            self._messages.append(message)
            self._writer.emit({"type": streams.MESSAGE, **message, "iteration": iteration})
            await self._db.add_message(
                self._thread_id,
                "assistant",
                turn.text,
                run_id=self._run_id,
                message_id=f"{self._run_id}/{self._attempt}/{iteration}",
            )
            if turn.finish == "complete":
                outcome.reason = "Completed"
                return outcome
            if turn.finish == "ask":
                outcome.reason = "AskedUser"
                return outcome
        outcome.reason = "MaxIterationsReached"
        return outcome
