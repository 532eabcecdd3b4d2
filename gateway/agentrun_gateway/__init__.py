"""The agentrun gateway: HTTP and Server-Sent Events for people and browsers.

Browsers cannot read Redis and people should not need ``kubectl`` to follow an agent. The
gateway (its own Deployment) lists, creates and stops AgentRuns through the Kubernetes API,
streams a run's events from Redis as SSE with resume, falls back to the database when a
stream has expired, and checks a bearer JWT on every request. Modules: :mod:`.app` (routes,
:func:`~agentrun_gateway.app.create_app`, :func:`~agentrun_gateway.app.main`), :mod:`.auth`,
:mod:`.sse`, :mod:`.config`, :mod:`.metrics`, :mod:`.openapi`.
"""

from __future__ import annotations
