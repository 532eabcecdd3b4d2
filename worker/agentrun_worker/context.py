"""Keeping the prompt within the model's context window (``spec.agent.enableContextManager``).

Called by the agent loop before every model call, on the messages it is about to send. The
thread keeps every message; only the prompt of that call is cut. What is kept: the system
prompt, the latest user message (the run's input), and the most recent turns that fit, as
one contiguous stretch; what is left out is the oldest middle of the conversation, and the
system prompt says how many messages were left out. A turn is never split: an assistant
message with tool calls travels with its tool results, since an API refuses a tool result
without its call (and a call without its result).

**Left out, not summarised.** The seed summarises the old messages with the model. That is
one more model call per trim (paid for, slow, able to fail the run) whose summary would
have to be stored and kept in step with the thread. Dropping is deterministic and free,
and a model that needs older context can ask; a summarising strategy can be added behind
the same function.

**Tokens are estimated, not counted.** ``tiktoken`` downloads its encodings from the
internet at first use (which fails in an offline or locked-down cluster), and the models
behind the OpenAI-compatible prefixes (Qwen, Llama, Mistral on vLLM...) use other
tokenizers anyway. The estimate is UTF-8 bytes / 3 per text, plus 4 per message, plus
1,000 per image (OpenAI bills a 1024×1024 high-detail image 765): it overestimates English
(about 4 characters a token) by a third and matches CJK text (3 bytes and about one token
a character), so the margin is built in. On top of that, a reserve for the reply is kept
free: a quarter of the window, at most 16,384 tokens.
"""

from __future__ import annotations

import json
import math
from typing import Any

DEFAULT_WINDOW = 128_000
"""``spec.agent.contextWindow`` when unset (the CRD's default too): today's common size."""
RESERVE_MAX = 16_384
MESSAGE_OVERHEAD = 4
IMAGE_TOKENS = 1_000
BYTES_PER_TOKEN = 3


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def estimate(message: dict[str, Any]) -> int:
    """Estimated tokens of one Chat Completions message."""
    tokens = MESSAGE_OVERHEAD
    content = message.get("content")
    if isinstance(content, str):
        tokens += text_tokens(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                tokens += IMAGE_TOKENS
            elif isinstance(part, dict):
                tokens += text_tokens(str(part.get("text", "")))
    if message.get("tool_calls"):
        tokens += text_tokens(json.dumps(message["tool_calls"], separators=(",", ":")))
    return tokens


def budget(window: int) -> int:
    """Tokens the prompt may use: the window less the reserve for the reply."""
    return window - min(window // 4, RESERVE_MAX)


def _groups(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Messages in indivisible groups: a tool result joins the message before it."""
    groups: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.get("role") == "tool" and groups:
            groups[-1].append(message)
        else:
            groups.append([message])
    return groups


def note(dropped: int) -> str:
    return (f"[{dropped} earlier messages of this conversation are left out here to fit the "
            "context window.]")


def fit(messages: list[dict[str, Any]], window: int, *, tools: list[dict[str, Any]] | None = None,
        ) -> tuple[list[dict[str, Any]], int]:
    """The prompt to send for ``messages`` within ``window`` tokens, and how many messages it
    leaves out (0: ``messages`` itself is returned)."""
    limit = budget(window)
    if tools:
        limit -= text_tokens(json.dumps(tools, separators=(",", ":")))
    if sum(estimate(m) for m in messages) <= limit:
        return messages, 0
    head = list(messages[:1]) if messages and messages[0].get("role") == "system" else []
    rest = messages[len(head):]
    # A tool result whose call is not in the history at all cannot be sent alone: it goes.
    groups = [g for g in _groups(rest) if g[0].get("role") != "tool"]
    last_user = max((i for i, g in enumerate(groups) if g[0].get("role") == "user"), default=None)
    # The note's own size is counted as if many messages were left out.
    used = sum(estimate(m) for m in head) + text_tokens(note(10**6)) + MESSAGE_OVERHEAD
    if last_user is not None:
        used += sum(estimate(m) for m in groups[last_user])
    kept: set[int] = set() if last_user is None else {last_user}
    for index in range(len(groups) - 1, -1, -1):
        if index == last_user:
            continue
        cost = sum(estimate(m) for m in groups[index])
        if used + cost > limit and index != len(groups) - 1:  # the latest turn goes in regardless
            break
        used += cost
        kept.add(index)
    dropped = len(rest) - sum(len(groups[i]) for i in kept)
    if dropped == 0:
        return messages, 0
    if head:
        system = {**head[0], "content": f"{head[0].get('content') or ''}\n\n{note(dropped)}"}
    else:
        system = {"role": "system", "content": note(dropped)}
    prompt = [system]
    for index in sorted(kept):
        prompt.extend(groups[index])
    return prompt, dropped
