"""Whether a reader's ``Last-Event-ID`` fell off the head of a trimmed stream.

The worker appends with ``XADD … MAXLEN ~`` (:class:`agentrun.streams.StreamWriter`), so a
long run's oldest entries are dropped. A client resuming from an id older than the first entry
still stored would otherwise get the entries after it that remain, silently missing the ones
trimmed. :func:`check` (called by :mod:`agentrun_gateway.sse` before it reads) tells the
client so with an explicit ``gap`` event, and the stream then continues from the first entry
still stored.

From ``XINFO STREAM``: the first entry's id and, on Redis 7+, ``entries-added`` (every entry
ever appended). Trimming only removes the oldest entries and runs never ``XDEL``, so
``entries-added - length`` entries are gone and they are exactly the ones before the first
entry. A reader from the start missed all of them; a reader resuming from an id among them
missed those after its id, a count Redis cannot give (ids are timestamps, not positions), so
the event then says how many at most.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from agentrun import streams
from agentrun_gateway import fanout

GAP = "gap"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check(client: aioredis.Redis, key: str, last_id: str) -> dict[str, Any] | None:
    """The ``gap`` event's fields when entries after ``last_id`` were trimmed, else None.

    ``after``: the reader's id; ``firstId``: the first entry still stored (the stream
    continues from it); ``missed``: how many entries the reader will not get, when known
    (a reader from the start), else ``missedAtMost``.
    """
    try:
        info: Any = await client.xinfo_stream(key)
    except redis_errors.ResponseError:  # the key vanished (expired) between two calls
        return None
    first = info.get("first-entry")
    if not first:
        return None  # empty stream: nothing to resume into
    first_id = _text(first[0])
    if fanout.entry_key(first_id) <= fanout.entry_key(last_id):
        return None  # everything after last_id is still there
    added, length = info.get("entries-added"), info.get("length")
    trimmed = int(added) - int(length) if added is not None and length is not None else None
    if trimmed is not None and trimmed <= 0:
        return None  # nothing was ever trimmed: last_id is older than the stream itself
    fields: dict[str, Any] = {"after": last_id, "firstId": first_id}
    if last_id == streams.START:
        fields["missed"] = trimmed
    elif trimmed is not None:
        fields["missedAtMost"] = trimmed
    fields["message"] = ("entries after the last event id were trimmed from the run's stream; "
                         "the stream continues from firstId")
    return fields
