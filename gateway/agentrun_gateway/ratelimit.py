"""Per-token rate limit of the gateway's ``/v1`` requests: a token bucket per caller.

:func:`agentrun_gateway.app.create_app` makes one :class:`Limiter` per app; each ``/v1``
request, once its token is verified, takes ``cost`` tokens from the bucket of its caller (the
token's ``sub``, else a hash of the token itself) or is answered 429 with ``Retry-After``.

The buckets live in the process: with several gateway processes or replicas, a caller may
make that many times the requests. That is the price of no shared store on the request path;
the limit is there to keep one caller from starving the others of one process, not to meter.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class Limiter:
    """Token buckets: ``rate`` tokens a second refill each, up to ``burst``."""

    def __init__(self, rate: float, burst: float, *, max_buckets: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._max = max_buckets
        self._clock = clock

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 if taken, else the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        cost = min(cost, self.burst)  # a request never costs more than a full bucket holds
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes nothing."""
        full = [key for key, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max:  # all busy: forget the longest idle
            for key, _bucket in sorted(self._buckets.items(), key=lambda kv: kv[1].updated)[: self._max // 10 or 1]:
                del self._buckets[key]


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
