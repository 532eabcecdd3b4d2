"""The agent loop: model turns until the agent completes, asks, or runs out of iterations.

Called by ``execution`` for one run. Every text chunk becomes an ``assistant`` stream event,
every finished turn a ``message`` event; every tool call the model makes is run through the
run's tool registry, streamed as a ``tool_call`` and a ``tool_result`` event, and its result
goes back to the model on the next turn. A turn — the assistant message and its tool
results — is stored in the thread's messages once its tools have run, so a resumed run
never finds a call without its result. Termination as in the seed: the ``complete`` tool
(or a reply without tool calls) ends the run ``Completed``, the ``ask`` tool ends it
``AskedUser``, ``maxIterations`` ends it ``MaxIterationsReached``; tool calls and replies cut
at the length limit continue the loop. ``maxTokens`` (input plus output, all turns of this
execution) is checked before every model call, as the seed checks billing: a run over
budget fails with ``BudgetExceeded``. The loop knows nothing of leases, stop requests or
status: cancelling its task stops it (a running tool included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from agentrun import store, streams
from agentrun_worker import context, tools
from agentrun_worker.providers import base

logger = structlog.get_logger(__name__)


@dataclasses.dataclass
class Outcome:
    result: str
    iterations: int
    input_tokens: int = 0
    output_tokens: int = 0
    reason: str = "Completed"  # Completed | AskedUser | MaxIterationsReached (BudgetExceeded is raised)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.input_tokens + self.output_tokens,
        }


class BudgetExceeded(Exception):
    reason = "BudgetExceeded"


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
        completed_turns: int = 0,
        last_result: str = "",
        registry: tools.Registry | None = None,
    ) -> None:
        """``completed_turns`` turns of this attempt are already in ``history`` (a resumed
        run): the loop goes on with the next iteration."""
        self._provider = provider
        self._writer = writer
        self._db = db
        self._run_id = run_id
        self._attempt = attempt
        self._thread_id = thread_id
        self._max_iterations = int(agent.get("maxIterations", 100))
        self._max_tokens = int(agent["maxTokens"]) if agent.get("maxTokens") else None
        self._window = (int(agent.get("contextWindow") or context.DEFAULT_WINDOW)
                        if agent.get("enableContextManager", True) else None)
        self._messages: list[dict[str, Any]] = []
        if agent.get("systemPrompt"):
            self._messages.append({"role": "system", "content": agent["systemPrompt"]})
        self._messages.extend(history)
        self._registry = registry if registry is not None else tools.Registry(())
        self._first_iteration = completed_turns + 1
        self.outcome = Outcome(result=last_result, iterations=completed_turns)

    async def run(self) -> Outcome:
        outcome = self.outcome
        for iteration in range(self._first_iteration, self._max_iterations + 1):
            used = outcome.input_tokens + outcome.output_tokens
            if self._max_tokens is not None and used >= self._max_tokens:
                raise BudgetExceeded(f"the run used {used} tokens of its budget maxTokens={self._max_tokens}")
            outcome.iterations = iteration

            def on_delta(chunk: str, iteration: int = iteration) -> None:
                self._writer.emit({"type": streams.ASSISTANT, "delta": chunk, "iteration": iteration})

            schemas = self._registry.schemas() or None
            prompt = self._messages
            if self._window is not None:  # the thread keeps everything; only this prompt is cut
                prompt, dropped = context.fit(self._messages, self._window, tools=schemas)
                if dropped:
                    logger.info("context.trimmed", iteration=iteration, dropped=dropped, kept=len(prompt))
            turn = await self._provider.turn(prompt, iteration=iteration, on_delta=on_delta, tools=schemas)
            outcome.input_tokens += turn.input_tokens
            outcome.output_tokens += turn.output_tokens
            outcome.result = turn.text
            message: dict[str, Any] = {"role": "assistant", "content": turn.text}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in turn.tool_calls
                ]
            self._messages.append(message)
            self._writer.emit({"type": streams.MESSAGE, **message, "iteration": iteration})
            ended, results = await self._run_tools(turn, iteration)
            turn_id = f"{self._run_id}/{self._attempt}/{iteration}"
            stored: Any = turn.text if not turn.tool_calls else {"content": turn.text,
                                                                 "tool_calls": message["tool_calls"]}
            await self._db.add_message(self._thread_id, "assistant", stored, run_id=self._run_id, message_id=turn_id)
            for index, result in enumerate(results):
                await self._db.add_message(self._thread_id, "tool", {k: v for k, v in result.items() if k != "role"},
                                           run_id=self._run_id, message_id=f"{turn_id}/tool/{index}")
            if ended is not None:
                outcome.reason = ended
                return outcome
            if turn.finish == "complete":
                outcome.reason = "Completed"
                return outcome
            if turn.finish == "ask":
                outcome.reason = "AskedUser"
                return outcome
        outcome.reason = "MaxIterationsReached"
        return outcome

    async def _run_tools(self, turn: base.Turn, iteration: int) -> tuple[str | None, list[dict[str, Any]]]:
        """Run the turn's tool calls in order; the first that ends the run decides how."""
        ended: str | None = None
        results: list[dict[str, Any]] = []
        for call in turn.tool_calls:
            self._writer.emit({"type": streams.TOOL_CALL, "id": call.id, "name": call.name,
                               "arguments": call.arguments, "iteration": iteration})
            result = await self._registry.call(call.name, call.arguments)
            self._writer.emit({"type": streams.TOOL_RESULT, "id": call.id, "name": call.name,
                               "content": result.content, "error": result.error, "iteration": iteration})
            tool_message = {"role": "tool", "tool_call_id": call.id, "content": result.content}
            self._messages.append(tool_message)
            results.append(tool_message)
            if result.ends_run and ended is None:
                ended = result.ends_run
                if result.content:
                    self.outcome.result = result.content
        return ended, results
