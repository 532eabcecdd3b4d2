"""The context manager's pure function: what the prompt keeps when the thread outgrows the window."""

from __future__ import annotations

from typing import Any

from agentrun_worker import context


def text(role: str, size: int, tag: str = "") -> dict[str, Any]:
    return {"role": role, "content": tag + "x" * size}


def call(call_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "search", "arguments": "{}"}}]}


def result(call_id: str, size: int) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "r" * size}


def total(messages: list[dict[str, Any]]) -> int:
    return sum(context.estimate(m) for m in messages)


def test_a_conversation_that_fits_is_sent_as_it_is() -> None:
    messages = [text("system", 100), text("user", 300), text("assistant", 300)]
    prompt, dropped = context.fit(messages, 4096)
    assert prompt is messages and dropped == 0


def test_the_oldest_middle_turns_go_and_the_system_prompt_and_latest_turns_stay() -> None:
    # Given a thread of 20 exchanges of ~1,000 estimated tokens each and a 4,096-token window
    messages = [text("system", 30, "SYS")]
    for i in range(20):
        messages += [text("user", 1500, f"u{i}:"), text("assistant", 1500, f"a{i}:")]
    # When the prompt is fitted
    prompt, dropped = context.fit(messages, 4096)
    # Then it is within the budget, begins with the system prompt (with the note), ends with the latest turns
    assert total(prompt) <= context.budget(4096)
    assert prompt[0]["role"] == "system" and prompt[0]["content"].startswith("SYS")
    assert f"[{dropped} earlier messages" in prompt[0]["content"]
    assert prompt[-1] is messages[-1] and prompt[-2] is messages[-2]
    assert dropped == len(messages) - len(prompt) > 0
    # and what is kept is one contiguous stretch of the latest messages
    assert prompt[1:] == messages[len(messages) - len(prompt) + 1:]


def test_a_tool_call_never_travels_without_its_result() -> None:
    # Given a run deep in tool calls, the oldest of which must go
    messages = [text("system", 10), text("user", 100, "task:")]
    for i in range(30):
        messages += [call(f"c{i}"), result(f"c{i}", 600)]
    prompt, dropped = context.fit(messages, 2048)
    assert dropped > 0
    # Then every tool result follows its own call, and every call has its results
    for index, message in enumerate(prompt):
        if message["role"] == "tool":
            previous = prompt[index - 1]
            assert previous.get("tool_calls") and previous["tool_calls"][0]["id"] == message["tool_call_id"]
        if message.get("tool_calls"):
            assert prompt[index + 1]["tool_call_id"] == message["tool_calls"][0]["id"]
    # And the run's input (the latest user message) is kept although it is old
    assert any(m["content"].startswith("task:") for m in prompt if m["role"] == "user")
    assert total(prompt) <= context.budget(2048)


def test_tool_schemas_count_against_the_budget() -> None:
    messages = [text("user", 900), text("assistant", 900), text("user", 900)]
    schemas = [{"type": "function", "function": {"name": "f", "description": "d" * 2000, "parameters": {}}}]
    assert context.fit(messages, 2048)[1] == 0
    prompt, dropped = context.fit(messages, 2048, tools=schemas)
    assert dropped == 1 and prompt[0]["role"] == "system"


def test_images_count_as_a_fixed_cost_and_text_by_utf8_bytes() -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "abc"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}
    assert context.estimate(image) == context.MESSAGE_OVERHEAD + 1 + context.IMAGE_TOKENS
    assert context.estimate({"role": "user", "content": "漢字"}) == context.MESSAGE_OVERHEAD + 2


def test_the_reserve_for_the_reply_is_a_quarter_of_the_window_at_most_16k() -> None:
    assert context.budget(4096) == 3072
    assert context.budget(1_000_000) == 1_000_000 - 16_384


async def test_the_history_of_a_long_thread_is_read_whole_page_by_page(tmp_path: Any) -> None:
    # Given a thread of more messages than one page of the store holds
    from agentrun_worker import history

    from agentrun import store

    db = store.open_store(f"sqlite:///{tmp_path / 'a.db'}")
    await db.connect()
    try:
        await db.migrate()
        await db.ensure_thread("t", namespace="ns")
        for i in range(7):
            await db.add_message("t", "user", f"m{i}", message_id=f"m{i}")
        # When the worker reads the history in pages of three
        messages = await history.thread_messages(db, "t", page=3)
        # Then it has every message, the latest included, in order
        assert [m.content for m in messages] == [f"m{i}" for i in range(7)]
    finally:
        await db.close()


def test_a_tool_result_whose_call_is_not_in_the_history_is_never_sent_alone() -> None:
    messages = [result("lost", 3000), text("user", 3000), text("assistant", 3000), text("user", 300)]
    prompt, dropped = context.fit(messages, 2048)
    assert all(m["role"] != "tool" for m in prompt)
    assert dropped == len(messages) - (len(prompt) - 1)
