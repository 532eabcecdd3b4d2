"""The direct chunk path of SSE responses (:mod:`agentrun_gateway.chunks`) on a real uvicorn.

With uvicorn's httptools protocol (what ``uvicorn[standard]`` runs, and the gateway in the
other tests here) a response may write pre-framed chunks straight to the connection, mixed
with ordinary ASGI body messages, and the client reads one well-formed chunked body. With
h11, which keeps its own framing state, there is no such path: the writer is None and the
response uses ASGI ``send`` alone. Pausing is covered end to end by test_stream_backpressure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from agentrun_gateway import chunks
from starlette import responses, routing

from tests.e2e import harness


class Mixed(responses.Response):
    """A body made of direct chunks where the server allows them and ASGI messages between."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Content-Type": "text/plain"})
        self.seen = seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        write = chunks.writer(scope)
        self.seen["writer"] = write is not None
        direct = 0
        for i in range(5):
            piece = f"part {i};".encode()
            if i % 2 == 0 and write is not None and write(chunks.frame(piece)):
                direct += 1
            else:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        self.seen["direct"] = direct
        await send({"type": "http.response.body", "body": b"end", "more_body": False})


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, dict[str, Any]]]:
    seen: dict[str, Any] = {}

    async def endpoint(_request: Any) -> responses.Response:
        return Mixed(seen)

    app = chunks.App(routes=[routing.Route("/", endpoint)])
    port = harness.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=request.param,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    harness.wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn to listen")
    try:
        yield request.param, f"http://127.0.0.1:{port}/", seen
    finally:
        server.should_exit = True
        thread.join(15)


def test_direct_chunks_and_asgi_messages_make_one_well_formed_body(
        served: tuple[str, str, dict[str, Any]]) -> None:
    protocol, url, seen = served
    # When a client reads the response twice on one keep-alive connection
    with httpx.Client(timeout=10) as client:
        bodies = [client.get(url) for _ in range(2)]
    # Then both bodies are whole and in order (the chunked framing was right, and the
    # connection was still usable after the first response)
    for response in bodies:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.text == "part 0;part 1;part 2;part 3;part 4;end"
    # And httptools took the direct path for the even parts; h11 offers none
    if protocol == "httptools":
        assert seen == {"writer": True, "direct": 3}
    else:
        assert seen == {"writer": False, "direct": 0}


def test_no_writer_without_the_server_send_in_the_scope() -> None:
    # An app not wrapped in chunks.App, or a server whose send is not uvicorn's cycle
    assert chunks.writer({"type": "http"}) is None
    assert chunks.writer({"type": "http", chunks.SERVER_SEND: print}) is None


def test_frame_is_an_http_chunk() -> None:
    assert chunks.frame(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert chunks.frame(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
