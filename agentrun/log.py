"""Structured logging (structlog) for every agentrun process.

Called once at process start by the operator, the worker and the CLI. Context such as
``run_id``, ``thread_id``, ``namespace`` and ``name`` is bound with
``structlog.contextvars.bind_contextvars`` and appears on every line of that run.
Never log a secret: URLs pass through :func:`redact_url` before they are logged.
"""

from __future__ import annotations

import logging
import sys
import urllib.parse

import structlog

from agentrun import messagelogs


def configure(level: str = "INFO", fmt: str = "console") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    messagelogs.install()  # Dramatiq's lines name messages by id, never by their body


def redact_url(url: str | None) -> str | None:
    """The URL without its password (``amqp://user:***@host/vhost``)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
