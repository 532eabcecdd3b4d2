"""``agentrun-demo-tools``: a small MCP server over stdio for the offline examples.

``examples/mcp-tools-offline.yaml`` runs it as a WorkerPool's standard server and as an
agent's own, so tools can be tried under ``agentrun dev`` with no network and no keys. It is
installed with agentrun (a console script in the virtualenv's bin directory, which the worker
searches first), so it works whether or not the virtualenv is activated.

Tools: ``time_in`` (the time now in an IANA time zone) and ``greeting`` (the value of the
environment variable ``DEMO_TOOLS_GREETING``, which the pool passes through ``envFrom``:
proof that a pool's env reaches its MCP servers).
"""

from __future__ import annotations

import datetime
import os
import zoneinfo

from mcp.server.mcpserver import MCPServer

server = MCPServer("agentrun-demo-tools", instructions="Offline demo tools of agentrun.", log_level="WARNING")


@server.tool()
def time_in(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone such as Asia/Tokyo."""
    try:
        zone: datetime.tzinfo = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone, timezone = datetime.UTC, f"UTC (unknown time zone {timezone!r})"
    return f"{datetime.datetime.now(zone):%Y-%m-%d %H:%M} in {timezone}"


@server.tool()
def greeting() -> str:
    """The greeting this server was configured with (DEMO_TOOLS_GREETING)."""
    return os.environ.get("DEMO_TOOLS_GREETING") or "(DEMO_TOOLS_GREETING is not set)"


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":  # pragma: no cover
    main()
