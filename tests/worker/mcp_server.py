"""A real MCP server for the tests, built on the official SDK's ``MCPServer`` (FastMCP's 2.x name).

Run it over stdio (``python tests/worker/mcp_server.py``, as a worker spawns a ``stdio`` server)
or over streamable HTTP served by uvicorn (``python tests/worker/mcp_server.py --http PORT``).
With ``--token-env VAR`` the HTTP server refuses every request whose ``Authorization`` header is
not ``Bearer <value of VAR>``, so a test can prove the worker sends the header it was told to.

Tools: ``echo`` and ``add`` answer; ``fail`` raises (an ``isError`` result); ``hang`` sleeps
(a call to cancel); ``crash`` kills the server process mid-call; ``token_digest`` returns a
digest of an environment variable (proving a secret arrived without echoing it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("testkit", instructions="Test tools for agentrun.", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ToolError(message)


@server.tool()
async def hang(seconds: float = 3600) -> str:
    """Sleep for a long time before answering."""
    await asyncio.sleep(seconds)
    return "woke up"


@server.tool()
def crash() -> str:
    """Kill the server process."""
    os._exit(3)


@server.tool()
def token_digest(name: str) -> str:
    """The first 12 hex digits of the SHA-256 of environment variable `name` (or 'unset')."""
    value = os.environ.get(name)
    return hashlib.sha256(value.encode()).hexdigest()[:12] if value else "unset"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _guarded(app: Any, token: str) -> Any:
    """The ASGI app, answering 401 to any HTTP request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, help="serve streamable HTTP on this port (else stdio)")
    parser.add_argument("--token-env", help="require Authorization: Bearer $VAR over HTTP")
    parser.add_argument("--tag", help="ignored: marks the process so a test can find it")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
        return
    import uvicorn

    app: Any = server.streamable_http_app(host="127.0.0.1")
    if args.token_env:
        app = _guarded(app, os.environ[args.token_env])
    print(f"serving on {args.http}", file=sys.stderr, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.http, log_level="warning")


if __name__ == "__main__":
    main()
