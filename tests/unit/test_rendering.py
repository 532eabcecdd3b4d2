"""The stream renderer on its own: what a terminal and a pipe get for each kind of event."""

from __future__ import annotations

import io
import json

import rich.console

from agentrun import rendering


def render(events: list[dict[str, object]], *, terminal: bool) -> str:
    buffer = io.StringIO()
    console = rich.console.Console(file=buffer, force_terminal=terminal, width=100, color_system=None)
    renderer = rendering.Renderer(console)
    for index, event in enumerate(events):
        renderer(f"1-{index}", event)
    return buffer.getvalue()


RUN = [
    {"type": "status", "status": "running", "attempt": 1},
    {"type": "assistant", "delta": "Let me ", "iteration": 1},
    {"type": "assistant", "delta": "look.", "iteration": 1},
    {"type": "message", "role": "assistant", "content": "Let me look.", "iteration": 1},
    {"type": "tool_call", "id": "c1", "name": "fetch", "arguments": json.dumps({"url": "http://x/" + "a" * 200}),
     "iteration": 1},
    {"type": "tool_result", "id": "c1", "name": "fetch", "content": "\n".join(f"line {i}" for i in range(50)),
     "error": False, "iteration": 1},
    {"type": "status", "status": "failed", "reason": "ModelError", "message": "boom", "iterations": 1,
     "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}},
]


def test_a_pipe_gets_plain_lines_with_long_arguments_and_results_cut() -> None:
    text = render(RUN, terminal=False)
    lines = text.splitlines()
    assert lines[:2] == ["running (attempt 1)", "Let me look."]  # the message is not printed twice
    assert lines[2].startswith('[tool] fetch url="http://x/aaa') and lines[2].endswith('…"')
    assert len(lines[2]) < 100
    assert lines[3] == "[tool result] fetch: line 0"
    assert "line 7" in text and "line 8" not in text and "more characters)" in text
    assert lines[-1] == 'Failed reason=ModelError iterations=1 tokens=7 (3 in, 4 out) message="boom"'
    assert "\x1b[" not in text and "╭" not in text


def test_a_terminal_gets_panels_and_a_marked_status_line() -> None:
    text = render(RUN, terminal=True)
    assert "╭─ ⚙ fetch" in text and "╭─ ✓ fetch" in text
    assert "● Failed reason=ModelError" in text


def test_messages_that_did_not_stream_are_printed_once() -> None:
    # as the gateway replays an expired run from the database: no deltas, whole messages
    text = render([{"type": "expired"}, {"type": "run", "phase": "Succeeded"},
                   {"type": "message", "role": "user", "content": "Hi"},
                   {"type": "message", "role": "assistant", "content": {"content": "Hello!", "tool_calls": []}},
                   {"type": "message", "role": "tool", "content": "{}"},
                   {"type": "status", "status": "succeeded", "source": "database"}], terminal=False)
    assert text.splitlines()[1:] == ["> Hi", "Hello!", "Succeeded"]


def test_arguments_that_are_not_a_json_object_are_shown_as_they_are() -> None:
    assert rendering.summarise_arguments("not json") == "not json"
    assert rendering.summarise_arguments("[1, 2]") == "[1, 2]"
    assert rendering.summarise_arguments("") == ""
    assert rendering.summarise_arguments({"n": 1, "flag": True, "s": "x"}) == 'n=1 flag=true s="x"'
