"""Dramatiq's log records carry message ids, never message bodies (``agentrun.messagelogs``)."""

from __future__ import annotations

import logging

import dramatiq
import dramatiq.broker
import pytest

from agentrun import messagelogs

CANARY = "canary-7f3a-the-input-of-a-run"


def _message() -> dramatiq.Message[None]:
    return dramatiq.Message(queue_name="agentrun.ns.default", actor_name="execute_run",
                            args=({"uid": "u-1", "spec": {"input": CANARY}},), kwargs={"k": CANARY}, options={},
                            message_id="id-1")


@pytest.fixture(autouse=True)
def installed() -> None:
    messagelogs.install()
    messagelogs.install()  # idempotent: one wrapper, not two


def test_a_message_in_a_dramatiq_line_becomes_its_actor_id_and_queue(caplog: pytest.LogCaptureFixture) -> None:
    # Given the lines Dramatiq logs around a failed delivery, at every level
    message = _message()
    worker = logging.getLogger("dramatiq.worker.WorkerThread")
    with caplog.at_level(logging.DEBUG):
        worker.debug("Received message %s with id %r.", message, message.message_id)
        worker.error("Failed to process message %s with unhandled exception.", message)
        worker.warning("Message %s was skipped.", dramatiq.broker.MessageProxy(message))
        logging.getLogger("agentrun_worker.actors.execute_run").debug(
            "Received args=%r kwargs=%r.", message.args, message.kwargs)
        logging.getLogger("dramatiq").info("%(body)s", {"body": {"input": CANARY}})
    # Then none holds the body, and each names the message
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert CANARY not in text
    assert text.splitlines()[:3] == [
        "Received message execute_run message id-1 on agentrun.ns.default with id 'id-1'.",
        "Failed to process message execute_run message id-1 on agentrun.ns.default with unhandled exception.",
        "Message execute_run message id-1 on agentrun.ns.default was skipped.",
    ]
    assert text.splitlines()[3:] == ["Received args=<not logged> kwargs=<not logged>.", "<not logged>"]


def test_other_loggers_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("agentrun.something").info("kept %s %r", "text", ["a", 1])
    assert caplog.records[-1].getMessage() == "kept text ['a', 1]"
