"""The four components as the contract finds them: by entry point, never by import.

The contract cannot import the operator, the worker, the gateway or the local stack (they
depend on it, not the other way round). Each registers what the CLI and the dev stack need
under the ``agentrun.components`` entry-point group (pyproject.toml):

- ``operator``, ``worker``: a start function for ``agentrun dev`` (:class:`Start`), which takes
  the settings and the shared in-process broker and returns a handle with ``stop()``;
- ``gateway``: the gateway's ``serve(host, port)`` (``agentrun gateway``);
- ``gateway-dev``: the gateway in a thread of ``agentrun dev`` (``start(...) -> (url, stop)``);
- ``local``: the dev stack module (``agentrun dev``, ``agentrun demo``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Protocol

import dramatiq

from agentrun import settings

GROUP = "agentrun.components"


class Handle(Protocol):
    def stop(self) -> None: ...


class Start(Protocol):
    def __call__(self, config: settings.Settings, broker: dramatiq.Broker) -> Handle: ...


def entry(name: str) -> Any:
    """What the component registered as ``name``: a function, a class or a module."""
    for found in metadata.entry_points(group=GROUP):
        if found.name == name:
            return found.load()
    raise LookupError(f"no agentrun component {name!r}: is agentrun installed (pip install -e .)?")


def load(name: str) -> Start:
    """The start function of the operator or the worker for ``agentrun dev``."""
    start: Start = entry(name)
    return start
