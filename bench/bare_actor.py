"""The baseline of ``bench dispatch``: a bare Dramatiq async actor that notes when it started.

Run by a real ``dramatiq bench.bare_actor`` process on RabbitMQ (publisher confirms), it
does nothing but write its start time to Redis: what dispatch costs without agentrun.
"""

from __future__ import annotations

import json
import os
import time

import dramatiq
import redis.asyncio as aioredis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import AsyncIO

QUEUE = "bench.bare"
RESULTS = "bench:{bare}:starts"

broker = RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                        confirm_delivery=True)
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)
_redis: aioredis.Redis | None = None


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
async def touch(index: int) -> None:
    started = time.time()
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    await _redis.rpush(RESULTS, json.dumps({"i": index, "t": started}))
