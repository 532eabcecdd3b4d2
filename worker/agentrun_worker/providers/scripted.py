"""The offline scripted provider (``model: scripted``).

Each turn of ``spec.agent.script`` is one model turn: its ``text`` is streamed word by word
with ``chunkDelayMs`` between chunks, or its ``fail`` raises a :class:`ProviderError`. The
last scripted turn completes the agent; with no script the agent echoes the input. Token
usage counts words, so the numbers are deterministic.

A turn's ``toolCalls`` (``[{"name": ..., "arguments": "<JSON text>"}]``) are the tool calls
the model makes after its text; in a later turn's text, ``{{toolResults}}`` is replaced by the
results the model received since its last turn (one per line), so a test sees what reached
the model.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

from agentrun_worker.providers import base

MODEL = "scripted"
TOOL_RESULTS = "{{toolResults}}"

_CHUNKS = re.compile(r"\S+\s*|\s+")


def words(text: str) -> int:
    return len(text.split())


class ScriptedProvider(base.Provider):
    def __init__(self, script: list[dict[str, Any]], user_input: str) -> None:
        self._script = script or [{"text": f"You said: {user_input}"}]

    def partial_usage(self, messages: list[dict[str, Any]], streamed: str) -> tuple[int, int]:
        return sum(words(str(m.get("content", ""))) for m in messages), words(streamed)

    async def turn(
        self,
        messages: list[dict[str, Any]],
        *,
        iteration: int,
        on_delta: base.OnDelta,
        tools: list[dict[str, Any]] | None = None,
    ) -> base.Turn:
        step = self._script[min(iteration, len(self._script)) - 1]
        prompt_tokens, _ = self.partial_usage(messages, "")
        if "fail" in step:
            raise base.ProviderError(str(step["fail"]))
        text = str(step.get("text", ""))
        if TOOL_RESULTS in text:
            text = text.replace(TOOL_RESULTS, "\n".join(_latest_tool_results(messages)))
        delay = int(step.get("chunkDelayMs", 0)) / 1000
        for chunk in _CHUNKS.findall(text):
            result = on_delta(chunk)
            if inspect.isawaitable(result):
                await result
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # stay cancellable, like a network stream
        finish = "complete" if iteration >= len(self._script) else "continue"
        calls = [base.ToolCall(id=f"call_{iteration}_{index}", name=str(call["name"]),
                               arguments=str(call.get("arguments") or "{}"))
                 for index, call in enumerate(step.get("toolCalls") or [])]
        return base.Turn(text=text, finish=finish, input_tokens=prompt_tokens, output_tokens=words(text),
                         tool_calls=calls)


def _latest_tool_results(messages: list[dict[str, Any]]) -> list[str]:
    """The contents of the tool messages after the last assistant message."""
    found: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        found.append(str(message.get("content", "")))
    return found[::-1]
