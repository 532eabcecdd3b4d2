"""The operator as an in-process component of ``agentrun dev`` (entry point ``operator``).

Runs kopf in its own thread with its own event loop, cluster-wide and standalone (one
operator, no peering), sharing the dev stack's in-process broker through ``memo``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import dramatiq
import kopf

import agentrun_operator  # noqa: F401  (registers the handlers)
from agentrun import settings
from agentrun_operator import config as operator_config


class OperatorThread:
    def __init__(self, config: settings.Settings, broker: dramatiq.Broker) -> None:
        # No /metrics in the dev stack unless asked for (AGENTRUN_METRICS_PORT): a fixed port
        # would clash between two dev stacks on one machine.
        op = operator_config.load()
        if "AGENTRUN_METRICS_PORT" not in os.environ:
            op = op.model_copy(update={"metrics_port": 0})
        self._memo = kopf.Memo(config=config, broker=broker, broker_shared=True, operator_config=op)
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="agentrun-operator", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        # kopf warns that OS signals are not handled outside the main thread: the dev stack
        # handles them and stops the operator through its stop flag.
        logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._stop = loop.create_future()
        try:
            loop.run_until_complete(
                kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    memo=self._memo,
                    ready_flag=self._ready,
                    stop_flag=self._stop,
                )
            )
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()
        finally:
            loop.close()

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))  # type: ignore[union-attr]
        self._thread.join(timeout=15)


def start(config: settings.Settings, broker: dramatiq.Broker) -> OperatorThread:
    operator = OperatorThread(config, broker)
    operator.start()
    return operator
