"""Clients of the runs: straight to the cluster and Redis, or through the gateway.

:mod:`agentrun.cli` picks one with :func:`open_client` (``--gateway URL`` or
``AGENTRUN_GATEWAY_URL`` choose the gateway) and talks to it through :class:`Client`.
"""

from __future__ import annotations

from agentrun.clients.base import Client, ClientError, Event, Invalid, NotFound, Unauthorized, Unreachable

__all__ = ["Client", "ClientError", "Event", "Invalid", "NotFound", "Unauthorized", "Unreachable", "open_client"]


def open_client(
    *,
    kubeconfig: str | None,
    context: str | None,
    redis_url: str | None,
    gateway_url: str | None,
    token_file: str | None,
) -> Client:
    """The gateway's client when ``gateway_url`` is set, else the cluster's."""
    if gateway_url:
        from agentrun.clients import gateway

        return gateway.GatewayClient(gateway_url, gateway.load_token(token_file))
    from agentrun.clients import cluster

    return cluster.ClusterClient(kubeconfig, context, redis_url)
