"""The Dramatiq broker, configured once per process before any actor is declared.

RabbitMQ with publisher confirms (``confirm_delivery=True``): ``enqueue`` returns only once
the broker has the message, durable queues and persistent messages (Dramatiq's defaults).
Without a broker URL the in-process stub broker is used (``agentrun dev`` only). The operator
calls :func:`enqueue`; the worker declares its actor on the broker this module sets.
"""

from __future__ import annotations

import dramatiq
import dramatiq.brokers.stub
import dramatiq.middleware

from agentrun import message, settings

# Dramatiq's TimeLimit default is 10 minutes; agent runs are bounded by their own
# timeoutSeconds (and the operator's deadline), so the broker-level limit is generous.
DEFAULT_TIME_LIMIT_MS = 24 * 3600 * 1000


def default_middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware without its Prometheus exporter, whatever Dramatiq is installed.

    Dramatiq 1.x lists the exporter first and 2.x leaves it out; it writes to a directory every
    Dramatiq process of the machine shares. The worker records the same series itself and
    serves them (``agentrun_worker.metrics``); the operator only publishes.
    """
    return [factory() for factory in dramatiq.middleware.default_middleware if factory.__name__ != "Prometheus"]


def make_broker(config: settings.Settings) -> dramatiq.Broker:
    broker: dramatiq.Broker
    if config.broker_url:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=config.broker_url, confirm_delivery=True, middleware=default_middleware())
    else:
        broker = dramatiq.brokers.stub.StubBroker(middleware=default_middleware())
    broker.add_middleware(dramatiq.middleware.AsyncIO())
    return broker


def setup(config: settings.Settings) -> dramatiq.Broker:
    """Build the broker and make it Dramatiq's global one (before actors are declared)."""
    broker = make_broker(config)
    dramatiq.set_broker(broker)
    return broker


def build_message(payload: message.RunMessage, queue: str) -> dramatiq.Message[None]:
    timeout_s = payload.spec.get("timeoutSeconds")
    time_limit = (int(timeout_s) + 300) * 1000 if timeout_s else DEFAULT_TIME_LIMIT_MS
    return dramatiq.Message(
        queue_name=queue,
        actor_name=message.ACTOR_NAME,
        args=(payload.model_dump(mode="json"),),
        kwargs={},
        options={"time_limit": time_limit, "max_retries": 3},
        message_id=payload.message_id(),
    )


def enqueue(broker: dramatiq.Broker, payload: message.RunMessage, queue: str) -> str:
    """Publish one run message (blocking until the broker confirms). Returns the message id."""
    if queue not in broker.get_declared_queues():
        broker.declare_queue(queue)
    sent = broker.enqueue(build_message(payload, queue))
    return sent.message_id
