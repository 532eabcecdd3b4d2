"""Redis key names share one cluster hash slot per run; the broker message stays small."""

from __future__ import annotations

import json

import pydantic
import pytest

from agentrun import keys, message


def _hash_tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_every_key_of_a_run_carries_the_uid_as_hash_tag() -> None:
    uid = "3f2a9c1e-0000-4000-8000-000000000001"
    for key in (keys.stream(uid), keys.lease(uid), keys.stop(uid), keys.control(uid)):
        assert _hash_tag(key) == uid
    assert keys.stream(uid) == f"agentrun:{{{uid}}}:stream"


def test_message_id_is_stable_per_attempt() -> None:
    base = dict(uid="u1", namespace="ns", name="n", generation=1, thread_id="t", queued_at="x", spec={})
    first = message.RunMessage(attempt=1, **base)
    assert first.message_id() == message.RunMessage(attempt=1, **base).message_id()
    assert first.message_id() != message.RunMessage(attempt=2, **base).message_id()


def test_message_refuses_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        message.RunMessage.model_validate(
            dict(uid="u", namespace="n", name="n", generation=1, attempt=1, thread_id="t",
                 queued_at="x", spec={}, api_key="sk-secret")
        )


def test_message_is_small_json() -> None:
    msg = message.RunMessage(uid="u", namespace="ns", name="n", generation=1, attempt=1, thread_id="t",
                             queued_at="2026-01-01T00:00:00Z", spec={"input": "hi", "agent": {"model": "scripted"}})
    assert len(json.dumps(msg.model_dump(mode="json"))) < 400


def test_queue_name_is_one_per_pool() -> None:
    assert message.queue_name("team-a", "gpu") == "agentrun.team-a.gpu"
