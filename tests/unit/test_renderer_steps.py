"""``agentrun logs`` shows a workflow's step boundaries as lines of their own."""

from __future__ import annotations

import io

import rich.console

from agentrun import rendering


def test_step_events_are_lines_between_the_text() -> None:
    out = io.StringIO()
    render = rendering.Renderer(rich.console.Console(file=out, width=200, color_system=None), rich_output=False)
    render("1-0", {"type": "step", "step": "draft", "index": 0, "run": 1, "status": "started", "prompt": "p"})
    render("2-0", {"type": "assistant", "delta": "Hello", "iteration": 1, "step": "draft"})
    render("3-0", {"type": "step", "step": "draft", "status": "failed", "reason": "ModelError", "message": "boom"})
    assert out.getvalue() == "▸ step draft started\nHello\n▸ step draft failed reason=ModelError message=boom\n"
