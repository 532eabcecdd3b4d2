"""In-process components for ``agentrun dev``: the operator and the worker, found by entry point.

The contract cannot import the operator or the worker (they depend on it, not the other way
round). Each registers a start function under the ``agentrun.components`` entry-point group;
the dev stack loads them by name. A start function takes the settings and the shared
in-process broker and returns a handle with ``stop()``.
"""

from __future__ import annotations

from importlib import metadata
from typing import Protocol

import dramatiq

from agentrun import settings

GROUP = "agentrun.components"


class Handle(Protocol):
    def stop(self) -> None: ...


class Start(Protocol):
    def __call__(self, config: settings.Settings, broker: dramatiq.Broker) -> Handle: ...


def load(name: str) -> Start:
    for entry in metadata.entry_points(group=GROUP):
        if entry.name == name:
            start: Start = entry.load()
            return start
    raise LookupError(f"no agentrun component {name!r}: is agentrun installed (pip install -e .)?")
