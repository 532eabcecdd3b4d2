"""The gateway in a thread of ``agentrun dev`` (entry point ``gateway-dev``).

Loopback only and without authentication (``insecure_no_auth`` exists for this); stopped
with the rest of the dev stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import uvicorn

from agentrun_gateway import app, config


def start(*, port: int, redis_url: str, database_url: str, kubeconfig: str) -> tuple[str, Callable[[], None]]:
    """Serve on 127.0.0.1:``port``; the URL and a function that stops it. ``OSError`` when it
    cannot listen."""
    cfg = config.GatewaySettings(host="127.0.0.1", port=port, redis_url=redis_url, database_url=database_url,
                                 kubeconfig=kubeconfig, insecure_no_auth=True)
    server = uvicorn.Server(uvicorn.Config(app.create_app(cfg), host=cfg.host, port=port,
                                           log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="agentrun-gateway", daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    while not server.started:
        if not thread.is_alive():
            raise OSError(f"the gateway could not listen on 127.0.0.1:{port}")
        threading.Event().wait(0.05)
    return f"http://127.0.0.1:{port}", stop
