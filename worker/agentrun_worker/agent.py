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
The run, each model call and each tool call are traced through ``tracing``.
"""

from __future__ import annotations

from typing import Any

import structlog

from agentrun import reasons, store, streams
from agentrun_worker import context, tools, tracing
from agentrun_worker import outcome as run_outcome
from agentrun_worker.providers import base

logger = structlog.get_logger(__name__)


Outcome = run_outcome.Outcome
"""What the loop counted (its home is ``outcome``, which ``tracing`` reads without this module)."""


class BudgetExceeded(Exception):
    reason = reasons.Reason.BUDGET_EXCEEDED


class AgentLoop:
    def __init__(
        self,
        *,
        provider: base.Provider,
        writer: streams.Emitter,
        db: store.Store,
        run_id: str,
        attempt: int,
        thread_id: str,
        agent: dict[str, Any],
        history: list[dict[str, Any]],
        completed_turns: int = 0,
        last_result: str = "",
        registry: tools.Registry | None = None,
        turn_prefix: str = "",
    ) -> None:
        """``completed_turns`` turns of this attempt are already in ``history`` (a resumed
        run): the loop goes on with the next iteration. ``turn_prefix`` keeps the stored
        turns of several loops of one run apart (workflow steps: ``step/<name>.<n>/``)."""
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
        self._registry = registry if registry is not None else tools.Registry(())
        system = "\n\n".join(p for p in (agent.get("systemPrompt"), self._registry.prompt) if p)
        if system:  # the registry's part says what each MCP server offers
            self._messages.append({"role": "system", "content": system})
        self._messages.extend(history)
        self._agent = agent
        self._first_iteration = completed_turns + 1
        self._turn_prefix = turn_prefix
        self.outcome = run_outcome.Outcome(result=last_result, iterations=completed_turns)

    async def run(self) -> run_outcome.Outcome:
        user = next((m.get("content") for m in reversed(self._messages) if m.get("role") == "user"), None)
        with tracing.invoke_agent(self._agent, run_id=self._run_id, thread_id=self._thread_id,
                                  user_input=user) as trace:
            trace.finished(await self._turns())
        return self.outcome

    async def _turns(self) -> run_outcome.Outcome:
        counted = self.outcome
        for iteration in range(self._first_iteration, self._max_iterations + 1):
            used = counted.input_tokens + counted.output_tokens
            if self._max_tokens is not None and used >= self._max_tokens:
                raise BudgetExceeded(f"the run used {used} tokens of its budget maxTokens={self._max_tokens}")
            counted.iterations = iteration

            streamed: list[str] = []

            def on_delta(chunk: str, iteration: int = iteration, streamed: list[str] = streamed) -> None:
                streamed.append(chunk)
                self._writer.emit({"type": streams.ASSISTANT, "delta": chunk, "iteration": iteration})

            schemas = self._registry.schemas() or None
            prompt = self._messages
            if self._window is not None:  # the thread keeps everything; only this prompt is cut
                prompt, dropped = context.fit(self._messages, self._window, tools=schemas)
                if dropped:
                    logger.info("context.trimmed", iteration=iteration, dropped=dropped, kept=len(prompt))
            try:
                with tracing.chat(prompt, iteration=iteration) as chat:
                    turn = await self._provider.turn(prompt, iteration=iteration, on_delta=chat.watch(on_delta),
                                                     tools=schemas)
                    chat.finished(turn)
            except BaseException:
                if streamed:  # cut short (stop, deadline, error mid-answer): what it streamed still counts
                    input_tokens, output_tokens = self._provider.partial_usage(prompt, "".join(streamed))
                    counted.input_tokens += input_tokens
                    counted.output_tokens += output_tokens
                raise
            counted.input_tokens += turn.input_tokens
            counted.output_tokens += turn.output_tokens
            counted.result = turn.text
            message: dict[str, Any] = {"role": "assistant", "content": turn.text}
            if turn.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in turn.tool_calls
                ]
            self._messages.append(message)
            self._writer.emit({"type": streams.MESSAGE, **message, "iteration": iteration})
            ended, results = await self._run_tools(turn, iteration)
            turn_id = f"{self._run_id}/{self._attempt}/{self._turn_prefix}{iteration}"
            stored: Any = turn.text if not turn.tool_calls else {"content": turn.text,
                                                                 "tool_calls": message["tool_calls"]}
            await self._db.add_message(self._thread_id, "assistant", stored, run_id=self._run_id, message_id=turn_id)
            for index, result in enumerate(results):
                await self._db.add_message(self._thread_id, "tool", {k: v for k, v in result.items() if k != "role"},
                                           run_id=self._run_id, message_id=f"{turn_id}/tool/{index}")
            if ended is not None:
                counted.reason = ended
                return counted
            if turn.finish == "complete":
                counted.reason = reasons.Reason.COMPLETED
                return counted
            if turn.finish == "ask":
                counted.reason = reasons.Reason.ASKED_USER
                return counted
        counted.reason = reasons.Reason.MAX_ITERATIONS_REACHED
        return counted

    async def _run_tools(self, turn: base.Turn, iteration: int) -> tuple[str | None, list[dict[str, Any]]]:
        """Run the turn's tool calls in order; the first that ends the run decides how."""
        ended: str | None = None
        results: list[dict[str, Any]] = []
        for call in turn.tool_calls:
            self._writer.emit({"type": streams.TOOL_CALL, "id": call.id, "name": call.name,
                               "arguments": call.arguments, "iteration": iteration})
            with tracing.execute_tool(call.name, call_id=call.id, arguments=call.arguments) as span:
                result = await self._registry.call(call.name, call.arguments)
                span.finished(result)
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
