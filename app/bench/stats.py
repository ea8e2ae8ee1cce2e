"""Percentiles and summaries of benchmark samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

N = TypeVar("N", int, float)


def percentile(samples: Sequence[N], p: float) -> N | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def samples_summary(samples: list[int]) -> dict[str, Any]:
    """p50, p95 and every sample: for a few timed runs (the startup bench)."""
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "samples": samples}


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def latency_summary(values_ms: list[float]) -> dict[str, Any]:
    """Count, p50/p95/p99 and max in ms to 0.1: for many timed requests (the load bench)."""
    return {
        "count": len(values_ms),
        "p50_ms": _round(percentile(values_ms, 50)),
        "p95_ms": _round(percentile(values_ms, 95)),
        "p99_ms": _round(percentile(values_ms, 99)),
        "max_ms": _round(max(values_ms)) if values_ms else None,
    }
