"""The operator's shared state, typed: what ``startup`` builds into kopf's ``memo``.

kopf hands every handler the same ``memo`` (a ``kopf.Memo``, an attribute bag). The operator
keeps one :class:`Memo` dataclass in it, built by ``startup.start`` and closed by
``startup.stop``; handlers read it through :func:`of`, so a field's name and type are checked
by mypy instead of being an attribute looked up at run time. What a caller of ``kopf.run``
puts into the bag before start (``agentrun dev``: ``config``, ``operator_config``, a shared
``broker`` and ``broker_shared``) stays there as the input :func:`inputs` reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import dramatiq
import lightkube
import redis.asyncio as aioredis

from agentrun import settings as agentrun_settings
from agentrun import store as run_store
from agentrun_operator import config as operator_config

if TYPE_CHECKING:
    from agentrun_operator import brokerstats, scaling

KEY = "agentrun"
"""The attribute of kopf's memo that holds the :class:`Memo`."""


@dataclasses.dataclass
class Memo:
    config: agentrun_settings.Settings
    operator_config: operator_config.OperatorSettings
    broker: dramatiq.Broker
    broker_shared: bool
    """The broker belongs to the caller (``agentrun dev``): not closed on clean-up."""
    api: lightkube.AsyncClient
    redis: aioredis.Redis | None
    """Stop requests and lease checks; None when no Redis is configured (no recovery scan)."""
    store: run_store.Store | None
    """The database, for the runs the operator ends itself; None when none is configured."""
    metrics_server: Any = None
    broker_stats: brokerstats.BrokerStats | None = None
    autoscaler: scaling.Autoscaler | None = None
    scan_task: asyncio.Task[None] | None = None
    autoscale_task: asyncio.Task[None] | None = None


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the caller of ``kopf.run`` may put into the memo before start."""

    config: agentrun_settings.Settings | None
    operator_config: operator_config.OperatorSettings | None
    broker: dramatiq.Broker | None
    broker_shared: bool


def inputs(memo: Any) -> Inputs:
    return Inputs(config=getattr(memo, "config", None), operator_config=getattr(memo, "operator_config", None),
                  broker=getattr(memo, "broker", None), broker_shared=bool(getattr(memo, "broker_shared", False)))


def install(memo: Any, state: Memo) -> None:
    setattr(memo, KEY, state)


def of(memo: Any) -> Memo:
    """The operator's state in kopf's ``memo`` (set by ``startup.start``)."""
    state = getattr(memo, KEY, None)
    if not isinstance(state, Memo):
        raise RuntimeError("the operator's memo is not set up: startup.start has not run")
    return state


def find(memo: Any) -> Memo | None:
    """The operator's state, or None before start-up finished (or after a failed one)."""
    state = getattr(memo, KEY, None)
    return state if isinstance(state, Memo) else None
