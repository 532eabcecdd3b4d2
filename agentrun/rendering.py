"""How a run's stream looks in a terminal, and in a pipe.

:class:`Renderer` is what ``agentrun logs`` and ``agentrun submit --follow`` feed each
stream event to, whichever client read it (:mod:`agentrun.clients`). On a terminal the
assistant's text is printed as it streams, each tool call and its result is a compact
panel (the tool's name and its arguments summarised; the result truncated, red when it is
an error), and the run ends with a status line: phase, reason, iterations and tokens. When
stdout is not a terminal the same content comes out as plain lines without colour or
boxes (``[tool] name key=value``), so scripts can grep it.
"""

from __future__ import annotations

import json
from typing import Any

import rich.console
import rich.markup
import rich.panel
import rich.text

from agentrun import streams

ARGUMENT_CHARS = 60
"""Longest value of one argument shown in a tool call; the rest is elided."""
ARGUMENTS_CHARS = 200
"""Longest summary of all of a call's arguments."""
RESULT_LINES = 8
RESULT_CHARS = 600
"""A tool result is cut at this many lines or characters, whichever comes first."""

PHASE_STYLES = {"succeeded": "green", "failed": "red", "stopped": "yellow", "deleted": "yellow"}


def summarise_arguments(arguments: Any) -> str:
    """``key=value`` pairs of a call's arguments (JSON text or an object), each value and the
    whole cut to a readable length."""
    value = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return _cut(arguments, ARGUMENTS_CHARS)
    if not isinstance(value, dict):
        return _cut(json.dumps(value, ensure_ascii=False), ARGUMENTS_CHARS)
    parts = []
    for key, item in value.items():
        text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        parts.append(f"{key}={json.dumps(_cut(text, ARGUMENT_CHARS), ensure_ascii=False)}"
                     if isinstance(item, str) else f"{key}={_cut(text, ARGUMENT_CHARS)}")
    return _cut(" ".join(parts), ARGUMENTS_CHARS)


def truncate_result(content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    lines = text.splitlines() or [""]
    cut = "\n".join(lines[:RESULT_LINES])
    cut = _cut(cut, RESULT_CHARS)
    hidden = len(text) - len(cut.removesuffix("…"))
    if hidden > 0 and not cut.endswith("…"):
        cut += "…"
    if hidden > 0:
        cut += f" ({hidden} more characters)"
    return cut


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def usage_text(usage: Any) -> str:
    """``tokens=17 (12 in, 5 out)`` from a usage object, or "" when there is none."""
    if not isinstance(usage, dict) or not usage:
        return ""
    total = usage.get("totalTokens")
    inp, out = usage.get("inputTokens"), usage.get("outputTokens")
    if total is None and inp is not None and out is not None:
        total = int(inp) + int(out)
    if total is None:
        return ""
    return f"tokens={total}" + (f" ({inp} in, {out} out)" if inp is not None and out is not None else "")


def status_line(event: dict[str, Any]) -> str:
    """The final line of a run: phase, reason, message, iterations and tokens."""
    phase = str(event.get("status") or "unknown")
    parts = [phase.capitalize()]
    for field in ("reason", "iterations"):
        if event.get(field) not in (None, ""):
            parts.append(f"{field}={event[field]}")
    tokens = usage_text(event.get("usage"))
    if tokens:
        parts.append(tokens)
    if event.get("message") not in (None, ""):
        parts.append(f"message={json.dumps(str(event['message']), ensure_ascii=False)}")
    return " ".join(parts)


class Renderer:
    """Prints stream events as they arrive; call it with ``(entry_id, event)``."""

    def __init__(self, console: rich.console.Console, *, rich_output: bool | None = None) -> None:
        self.console = console
        self.rich = console.is_terminal if rich_output is None else rich_output
        self.in_text = False
        """Assistant text is on the current line: end it before printing anything else."""
        self.streamed = False
        """Assistant text arrived since the last ``message`` event (so the message need not
        be printed again)."""
        self.final: dict[str, Any] | None = None
        """The run's last status event, once seen."""

    def __call__(self, entry_id: str | None, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == streams.ASSISTANT:
            self.console.out(str(event.get("delta", "")), end="", highlight=False)
            self.in_text = self.streamed = True
            return
        if kind == streams.MESSAGE:
            self._message(event)
            return
        self._end_text()
        if kind == streams.TOOL_CALL:
            self._tool_call(event)
        elif kind == streams.TOOL_RESULT:
            self._tool_result(event)
        elif kind == streams.STATUS:
            self._status(event)
        elif kind == streams.STEP:
            self._step(event)
        elif kind == "expired":
            self._note("the run's stream is gone (expired, or never written); what follows comes from the record")
        elif kind == "run":
            pass  # the database's record; its phase arrives as the final status event
        elif kind == streams.USAGE:
            self._note(usage_text(event) or "usage")
        else:
            self._note(f"{kind}: {json.dumps(event, ensure_ascii=False, default=str)}")

    def end_line(self) -> None:
        """End the assistant's text line, if one is open, before something else is printed
        (on stderr, say) so that it starts a line of its own."""
        self._end_text()

    def _end_text(self) -> None:
        if self.in_text:
            self.console.out("")
            self.in_text = False

    def _message(self, event: dict[str, Any]) -> None:
        """A whole message: printed only when its text did not stream (a stream read back from
        the database), otherwise it just ends the line."""
        streamed, self.streamed = self.streamed, False
        self._end_text()
        if streamed:
            return
        role, content = event.get("role"), event.get("content")
        if isinstance(content, dict):  # stored assistant turns with tool calls
            content = content.get("content")
        if not content or role == "tool":
            return
        if role == "user":
            self._line(f"> {content}", "bold")
        else:
            self.console.out(str(content), highlight=False)

    def _tool_call(self, event: dict[str, Any]) -> None:
        name = str(event.get("name") or "?")
        summary = summarise_arguments(event.get("arguments"))
        if not self.rich:
            self.console.out(f"[tool] {name} {summary}".rstrip(), highlight=False)
            return
        body = rich.text.Text(summary or "(no arguments)", style="dim" if not summary else "")
        self.console.print(rich.panel.Panel(body, title=f"[bold cyan]⚙ {rich.markup.escape(name)}[/]",
                                            title_align="left", border_style="cyan", expand=False))

    def _tool_result(self, event: dict[str, Any]) -> None:
        name = str(event.get("name") or "?")
        error = bool(event.get("error"))
        content = truncate_result(event.get("content", ""))
        if not self.rich:
            label = "[tool error]" if error else "[tool result]"
            self.console.out(f"{label} {name}: {content}", highlight=False)
            return
        style = "red" if error else "green"
        title = f"[bold {style}]{'✗' if error else '✓'} {rich.markup.escape(name)}[/]"
        self.console.print(rich.panel.Panel(rich.text.Text(content, style="red" if error else ""), title=title,
                                            title_align="left", border_style=style, expand=False))

    def _status(self, event: dict[str, Any]) -> None:
        status = str(event.get("status") or "")
        if status == "running":
            detail = f"attempt {event.get('attempt', 1)}"
            self._note(f"running ({detail})")
            return
        if status == "requeued":
            self._line(f"requeued (reason={event.get('reason')}, attempt {event.get('attempt')}): "
                       "another worker continues the run", "yellow")
            return
        self.final = event
        line = status_line(event)
        if self.rich:
            style = PHASE_STYLES.get(status, "cyan")
            self.console.print(rich.text.Text.assemble(("● ", style), (line, f"bold {style}")))
        else:
            self.console.out(line, highlight=False)

    def _step(self, event: dict[str, Any]) -> None:
        """A workflow step's boundary, as a line of its own."""
        detail = " ".join(f"{k}={event[k]}" for k in ("reason", "message") if event.get(k) not in (None, ""))
        self._line(f"▸ step {event.get('step')} {event.get('status')} {detail}".rstrip(), "bold")

    def _note(self, text: str) -> None:
        self._line(text, "dim")

    def _line(self, text: str, style: str) -> None:
        if self.rich:
            self.console.print(rich.text.Text(text, style=style))
        else:
            self.console.out(text, highlight=False)
