"""Shared output of the benchmarks: percentiles, JSON lines and the RESULT line."""

from __future__ import annotations

import json
import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 3),
        "p90_ms": round(percentile(values_ms, 90), 3),
        "p99_ms": round(percentile(values_ms, 99), 3),
        "mean_ms": round(statistics.fmean(values_ms), 3) if values_ms else float("nan"),
    }


def line(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def result(name: str, **fields: Any) -> None:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"RESULT name={name} {parts}", flush=True)
