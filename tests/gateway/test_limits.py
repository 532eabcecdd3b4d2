"""The rate limiter's buckets and the validation pool's recovery, without a gateway."""

from __future__ import annotations

import concurrent.futures
import os
import signal

import pytest
from agentrun_gateway import admission, ratelimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_the_rate_and_says_how_long_to_wait() -> None:
    clock = Clock()
    limiter = ratelimit.Limiter(rate=2.0, burst=4, clock=clock)
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4
    assert limiter.take("a") == pytest.approx(0.5)  # one token at 2/s
    assert limiter.take("b") == 0.0  # another caller, another bucket
    clock.now += 1.0  # two tokens back
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a", cost=3) == pytest.approx(1.5)
    clock.now += 100
    assert limiter.take("a", cost=10) == 0.0  # never more than a full bucket, which refills to 4
    assert ratelimit.retry_after(0.01) == "1" and ratelimit.retry_after(2.2) == "3"


def test_idle_buckets_are_forgotten_when_there_are_too_many() -> None:
    clock = Clock()
    limiter = ratelimit.Limiter(rate=1.0, burst=2, max_buckets=3, clock=clock)
    for key in "abc":
        limiter.take(key)
    clock.now += 10  # all refilled: forgetting them changes nothing
    limiter.take("d")
    assert len(limiter._buckets) == 1
    for key in "efg":  # all busy: the longest idle goes
        limiter.take(key, cost=2)
    assert len(limiter._buckets) <= 3 and "g" in limiter._buckets


def test_the_limiter_refuses_a_rate_that_lets_nothing_through() -> None:
    with pytest.raises(ValueError):
        ratelimit.Limiter(rate=0, burst=1)


async def test_a_validation_process_that_dies_is_replaced() -> None:
    pool = admission.Pool("process", workers=1, queue=2)
    pool.start()
    try:
        body = b'{"metadata": {"name": "x"}, "spec": {"input": "hi", "agent": {"model": "scripted"}}}'
        assert isinstance(await pool.check(body, "ns", creator="me"), admission.Accepted)
        # When its process is killed, the next check fails (the gateway answers 503) ...
        executor = pool._executor
        assert isinstance(executor, concurrent.futures.ProcessPoolExecutor)
        for pid in list(executor._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(concurrent.futures.BrokenExecutor):
            await pool.check(body, "ns", creator="me")
        # ... and the one after runs in a new process
        accepted = await pool.check(body, "ns", creator="me")
        assert isinstance(accepted, admission.Accepted)
        assert accepted.obj["metadata"]["annotations"] == {admission.CREATED_BY: "me"}
    finally:
        pool.close()


async def test_a_full_queue_is_busy_not_a_backlog() -> None:
    pool = admission.Pool("thread", workers=1, queue=1)
    pool._pending = 1  # one check in flight
    with pytest.raises(admission.Busy):
        await pool.check(b"{}", "ns", creator="me")
    pool.close()
