"""Prometheus metrics of the gateway, served at ``/metrics``.

One :class:`Metrics` per app (its own registry, so several apps in one process — the tests —
do not collide). Updated by :mod:`agentrun_gateway.app` and :mod:`agentrun_gateway.sse`.
"""

from __future__ import annotations

import prometheus_client


class Metrics:
    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.streams = prometheus_client.Gauge(
            "agentrun_gateway_streams", "SSE streams connected now.", registry=self.registry
        )
        self.events = prometheus_client.Counter(
            "agentrun_gateway_events_sent", "Run events sent to SSE clients (heartbeats not counted).",
            registry=self.registry,
        )
        self.auth_failures = prometheus_client.Counter(
            "agentrun_gateway_auth_failures", "Requests refused by authentication or authorization.",
            ["reason"], registry=self.registry,
        )
        self.rate_limited = prometheus_client.Counter(
            "agentrun_gateway_rate_limited", "Requests refused with 429 by the per-token rate limit.",
            registry=self.registry,
        )
        self.bodies_refused = prometheus_client.Counter(
            "agentrun_gateway_bodies_refused", "Create-run bodies refused (413, 400 or 422).", ["status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
