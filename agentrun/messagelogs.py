"""Dramatiq's log lines name a broker message by its id, never by its body.

Dramatiq formats a message into its log lines with ``%s``, which prints the actor call with
every argument: ``Failed to process message execute_run({… 'spec': {'input': …}}) with
unhandled exception`` on each failed delivery, ``Received message …`` and ``Received
args=…`` at debug level. A run's message carries its spec (input, system prompt, images), so
each retry copied it into the logs. :func:`install` (called by :func:`agentrun.log.configure`,
so by the operator, the worker and every other agentrun process) wraps the log record
factory: in records of the ``dramatiq`` loggers a message becomes
``execute_run message 1c9e… on agentrun.ns.pool`` and any other container argument (the
actor's args and kwargs) ``<not logged>``. Records are rewritten where they are made, so
every handler, formatter and integration (Sentry's breadcrumbs) sees only the ids.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

_installed = False
_ACTOR_CALL = "Received args=%r kwargs=%r."
"""The debug line of ``dramatiq.Actor.__call__``, logged under the actor's module's name."""


class Shown:
    """What a log line prints in place of an argument, with ``%s`` and ``%r`` alike."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


HIDDEN = Shown("<not logged>")


def redact(value: Any) -> Any:
    """A log argument with no message body in it."""
    dramatiq = sys.modules.get("dramatiq")  # a dramatiq record means dramatiq is imported
    if dramatiq is not None and isinstance(value, (dramatiq.Message, dramatiq.broker.MessageProxy)):
        return Shown(f"{value.actor_name} message {value.message_id} on {value.queue_name}")
    if isinstance(value, (tuple, list, dict, set)):
        return HIDDEN
    return value


def _redacted_args(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(redact(a) for a in args)
    if isinstance(args, Mapping):  # logger.info("%(x)s", {...}): the mapping is the arguments
        return {key: redact(value) for key, value in args.items()}
    return redact(args)


def install() -> None:
    """Rewrite the arguments of every ``dramatiq`` log record; idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.args and (record.name == "dramatiq" or record.name.startswith("dramatiq.")
                            or record.msg == _ACTOR_CALL):
            record.args = _redacted_args(record.args)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
