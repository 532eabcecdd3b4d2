"""``python -m bench stream``: worker → reader delivery through Redis, three ways.

(a) agentrun: :class:`agentrun.streams.StreamWriter` → :func:`agentrun.streams.follow`;
(b) the seed's pattern: ``RPUSH`` + ``PUBLISH`` per chunk, the reader ``LRANGE``s the new
tail on each notification; (c) raw ``XADD`` → ``XREAD BLOCK``, one call per chunk.

Latency: chunks paced like a model streaming tokens (one every ``--interval-ms``), each
carrying its send time; the reader subtracts. Throughput: ``--burst`` chunks emitted as fast
as the writer can, timed until the reader has the last one. Same Redis, same process pair
(writer and reader in one event loop, separate connections), same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from agentrun import keys, streams
from bench import report


async def agentrun_pair(url: str, paced: int, interval: float, burst: int) -> tuple[list[float], float]:
    w, r = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    uid = str(uuid.uuid4())
    latencies: list[float] = []

    async def read() -> float:
        async for _, event in streams.follow(r, uid):
            if event["type"] == streams.STATUS:
                break
            latencies.append((time.perf_counter() - event["t"]) * 1000)
        return time.perf_counter()

    writer = streams.StreamWriter(w, uid)
    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    for _ in range(paced):
        writer.emit({"type": streams.ASSISTANT, "delta": "tok ", "t": time.perf_counter()})
        await asyncio.sleep(interval)
    writer.emit({"type": streams.STATUS, "status": "succeeded"})
    await writer.flush()
    await reader
    await w.delete(keys.stream(uid))
    paced_latencies = list(latencies)

    # throughput
    uid = str(uuid.uuid4())
    writer = streams.StreamWriter(w, uid)
    latencies.clear()
    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    for i in range(burst):
        writer.emit({"type": streams.ASSISTANT, "delta": "tok ", "t": time.perf_counter()})
        if i % 64 == 0:
            await asyncio.sleep(0)  # a model stream yields to the loop between network reads
    writer.emit({"type": streams.STATUS, "status": "succeeded"})
    await writer.flush()
    end = await reader
    await w.delete(keys.stream(uid))
    await w.aclose()
    await r.aclose()
    return paced_latencies, burst / (end - start)


async def seed_pair(url: str, paced: int, interval: float, burst: int) -> tuple[list[float], float]:
    """RPUSH + PUBLISH per chunk; the reader subscribes, then LRANGEs from its index on notify."""
    w, r = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    latencies: list[float] = []

    async def run(count: int, paced_mode: bool) -> float:
        run_id = str(uuid.uuid4())
        list_key, channel = f"agent_run:{run_id}:responses", f"agent_run:{run_id}:new_response"
        pubsub = r.pubsub()
        await pubsub.subscribe(channel)
        done = asyncio.Event()
        finished_at = 0.0

        async def read() -> None:
            nonlocal finished_at
            index = 0
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                items = await r.lrange(list_key, index, -1)
                index += len(items)
                now = time.perf_counter()
                for raw in items:
                    event = json.loads(raw)
                    if event["type"] == "status":
                        finished_at = now
                        done.set()
                        return
                    latencies.append((now - event["t"]) * 1000)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        for _ in range(count):
            data = json.dumps({"type": "assistant", "delta": "tok ", "t": time.perf_counter()})
            await w.rpush(list_key, data)
            await w.publish(channel, "new")
            if paced_mode:
                await asyncio.sleep(interval)
        await w.rpush(list_key, json.dumps({"type": "status", "status": "completed"}))
        await w.publish(channel, "new")
        await done.wait()
        await reader
        await pubsub.aclose()
        await w.delete(list_key)
        return count / (finished_at - start)

    await run(paced, True)
    paced_latencies = list(latencies)
    latencies.clear()
    throughput = await run(burst, False)
    await w.aclose()
    await r.aclose()
    return paced_latencies, throughput


async def raw_pair(url: str, paced: int, interval: float, burst: int) -> tuple[list[float], float]:
    """The floor: one XADD per chunk, the reader XREAD BLOCKs on its cursor."""
    w, r = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    latencies: list[float] = []

    async def run(count: int, paced_mode: bool) -> float:
        key = f"bench:{{{uuid.uuid4()}}}:raw"
        finished_at = 0.0

        async def read() -> None:
            nonlocal finished_at
            cursor = "0-0"
            while True:
                for _, entries in await r.xread({key: cursor}, block=5000, count=500):
                    now = time.perf_counter()
                    for entry_id, fields in entries:
                        cursor = entry_id
                        event = json.loads(fields[b"e"])
                        if event["type"] == "status":
                            finished_at = now
                            return
                        latencies.append((now - event["t"]) * 1000)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        for _ in range(count):
            await w.xadd(key, {"e": json.dumps({"type": "assistant", "delta": "tok ", "t": time.perf_counter()})})
            if paced_mode:
                await asyncio.sleep(interval)
        await w.xadd(key, {"e": json.dumps({"type": "status"})})
        await reader
        await w.delete(key)
        return count / (finished_at - start)

    await run(paced, True)
    paced_latencies = list(latencies)
    latencies.clear()
    throughput = await run(burst, False)
    await w.aclose()
    await r.aclose()
    return paced_latencies, throughput


async def measure(url: str, paced: int, interval_ms: float, burst: int, rounds: int) -> int:
    pairs: dict[str, Callable[..., Awaitable[tuple[list[float], float]]]] = {
        "agentrun": agentrun_pair, "seed": seed_pair, "raw": raw_pair,
    }
    lat: dict[str, list[float]] = {k: [] for k in pairs}
    thr: dict[str, list[float]] = {k: [] for k in pairs}
    for _ in range(rounds):  # interleaved, so drift on a noisy machine hits all three alike
        for name, pair in pairs.items():
            latencies, throughput = await pair(url, paced, interval_ms / 1000, burst)
            lat[name].extend(latencies)
            thr[name].append(throughput)
    best = {k: max(v) for k, v in thr.items()}
    for name in pairs:
        report.line(bench="stream", variant=name, **report.summary(lat[name]), chunks_per_s=round(best[name]))
    p99 = {k: report.percentile(v, 99) for k, v in lat.items()}
    ratio_p99 = p99["agentrun"] / p99["raw"]
    ratio_thr = best["agentrun"] / best["seed"]
    report.result(
        "stream",
        agentrun_p99_ms=round(p99["agentrun"], 3), raw_p99_ms=round(p99["raw"], 3), seed_p99_ms=round(p99["seed"], 3),
        p99_vs_raw=round(ratio_p99, 2), agentrun_chunks_per_s=round(best["agentrun"]),
        seed_chunks_per_s=round(best["seed"]), raw_chunks_per_s=round(best["raw"]),
        throughput_vs_seed=round(ratio_thr, 2),
        target_met=ratio_p99 <= 1.5 and ratio_thr >= 1.4,
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stream")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--paced", type=int, default=500, help="chunks per latency round")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="pause between paced chunks")
    parser.add_argument("--burst", type=int, default=20_000, help="chunks per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.redis_url, args.paced, args.interval_ms, args.burst, args.rounds))
