"""The worker as an in-process component of ``agentrun dev`` (entry point ``worker``).

Declares the actor on the dev stack's stub broker and runs a Dramatiq ``Worker`` on the
default pool's queue in this process.
"""

from __future__ import annotations

import importlib

import dramatiq

from agentrun import settings
from agentrun_worker import runtime


def start(config: settings.Settings, broker: dramatiq.Broker) -> dramatiq.Worker:
    runtime.install(config, broker)
    importlib.import_module("agentrun_worker.actors")
    worker = dramatiq.Worker(broker, queues={config.queue}, worker_threads=8, worker_timeout=100)
    worker.start()
    return worker
