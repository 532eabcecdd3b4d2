"""Writing pre-framed HTTP/1.1 chunks of an SSE response straight to the client's connection.

A live run's event goes to every client of the run unchanged, so its chunk (``<size>\\r\\n``,
the frames, ``\\r\\n``) is framed once by the shared reader (:func:`frame`) and the same bytes
are written to each connection. Through ASGI each of those writes would be a message dict, a
coroutine per middleware and the server's framing of the body again: at a thousand clients per
event that per-client path is most of the gateway's CPU (docs/benchmarks.md).

:func:`writer` gives the response the connection's write for uvicorn's HTTP/1.1 protocols
(httptools and h11), whose ASGI ``send`` is a method of the request's cycle holding the
transport, its flow control and whether the response is chunked; :class:`App` records the
server's ``send`` in the scope before any middleware wraps it. Anything else (another server,
HTTP/2, a paused connection) gets None or False and the response goes through ASGI ``send``
as usual, so this is a fast path and never the only one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette import applications

SERVER_SEND = "agentrun.server_send"
"""Scope key of the server's own ``send``, set by :class:`App`."""


class App(applications.Starlette):
    """The gateway's Starlette app: keeps the server's ``send`` in the scope for :func:`writer`."""

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def frame(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def writer(scope: MutableMapping[str, Any]) -> Callable[[bytes], bool] | None:
    """After the response's head was sent: a function that writes one chunk (from :func:`frame`)
    to the connection and says whether it did, or None when this server offers no such path.

    It writes only while the response is open, chunked, and the connection neither closing nor
    asking for back-pressure (uvicorn's flow control paused): otherwise it returns False and
    the caller sends the body through ASGI, which waits for the connection to drain.
    """
    send = scope.get(SERVER_SEND)
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    flow = getattr(cycle, "flow", None)
    if (cycle is None or transport is None or flow is None or getattr(cycle, "chunked_encoding", None) is not True
            or not hasattr(flow, "write_paused") or not hasattr(cycle, "disconnected")
            or not hasattr(cycle, "response_complete")):
        return None

    def write(chunk: bytes) -> bool:
        if flow.write_paused or cycle.disconnected or cycle.response_complete or transport.is_closing():
            return False
        transport.write(chunk)
        return True

    return write
