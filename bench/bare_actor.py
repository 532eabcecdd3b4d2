"""The baselines of ``bench dispatch`` and ``bench overhead``: bare Dramatiq async actors.

Run by a real ``dramatiq bench.bare_actor`` process on RabbitMQ (publisher confirms).
``touch`` does nothing but write its start time to Redis: what dispatch costs without
agentrun. ``stream_reply`` writes a scripted reply's events to a Redis stream in one
pipelined round trip: what a trivial run costs without agentrun.
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


STREAM_QUEUE = "bench.bare-stream"


@dramatiq.actor(queue_name=STREAM_QUEUE, max_retries=0)
async def stream_reply(key: str, chunks: list[str]) -> None:
    """The baseline of ``bench overhead``: the scripted reply's events, straight to a stream."""
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    pipe = _redis.pipeline(transaction=False)
    pipe.xadd(key, {"e": json.dumps({"type": "status", "status": "running"})})
    for chunk in chunks:
        pipe.xadd(key, {"e": json.dumps({"type": "assistant", "delta": chunk, "iteration": 1})})
    pipe.xadd(key, {"e": json.dumps({"type": "message", "role": "assistant", "content": "".join(chunks),
                                     "iteration": 1})})
    pipe.xadd(key, {"e": json.dumps({"type": "status", "status": "succeeded", "reason": "Completed"})})
    pipe.expire(key, 3600)
    await pipe.execute()
