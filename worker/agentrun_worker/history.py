"""A run's conversation: the thread's stored messages, read whole, and what a resumed run did.

Called by ``execution`` (an agent run) and ``workflows`` (a workflow run) alike, so both read
a thread the same way: every page of it (the store returns at most a page per call, and a
long thread's latest turns matter most), as the model sees its messages, with the turns an
interrupted delivery of the same attempt stored (a run handed back at shutdown) set apart so
the runner goes on after them instead of paying for them twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agentrun import store

PAGE = 1000
"""Messages per store call (the backends' own default page)."""

CONVERSATION_ROLES = ("user", "assistant", "tool")
"""The roles the model sees; other records (a workflow step's ``step``) are the worker's own."""


async def thread_messages(db: store.Store, thread_id: str, *, page: int = PAGE) -> list[store.MessageRecord]:
    """Every message of the thread, in order, page by page."""
    messages: list[store.MessageRecord] = []
    while True:
        batch = await db.list_messages(thread_id, after_seq=messages[-1].seq if messages else 0, limit=page)
        messages.extend(batch)
        if len(batch) < page:
            return messages


def model_message(record: store.MessageRecord) -> dict[str, Any]:
    """A stored message as the model sees it: a dict content (a turn with tool calls, a tool
    result) holds the message's fields; anything else is the text content."""
    if isinstance(record.content, dict):
        return {"role": record.role, **record.content}
    return {"role": record.role, "content": record.content}


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A thread as one delivery of a run finds it."""

    stored: list[store.MessageRecord]
    """Every message of the thread."""
    run_id: str
    attempt: int

    @property
    def own_prefix(self) -> str:
        """The id prefix of what this attempt stores (``<uid>/<attempt>/``)."""
        return f"{self.run_id}/{self.attempt}/"

    def history(self, *, other_runs_only: bool = False) -> list[dict[str, Any]]:
        """The messages the model sees; ``other_runs_only`` leaves this run's own out."""
        return [model_message(m) for m in self.stored
                if m.role in CONVERSATION_ROLES and not (other_runs_only and m.run_id == self.run_id)]

    def resumed(self) -> list[store.MessageRecord]:
        """What an interrupted delivery of this attempt stored, in order."""
        return [m for m in self.stored if m.id.startswith(self.own_prefix)]

    def resumed_turns(self) -> list[store.MessageRecord]:
        """The agent turns (assistant messages) this attempt completed before, in order."""
        return [m for m in self.resumed() if m.role == "assistant"]


async def read(db: store.Store, thread_id: str, *, run_id: str, attempt: int) -> Conversation:
    return Conversation(stored=await thread_messages(db, thread_id), run_id=run_id, attempt=attempt)


def last_result(turns: list[store.MessageRecord]) -> str:
    """The text of the last turn (what a resumed run reports if nothing follows)."""
    return str(model_message(turns[-1]).get("content") or "") if turns else ""
