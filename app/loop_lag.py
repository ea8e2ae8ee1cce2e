"""How late the API's event loop runs what it was asked to run: a Prometheus gauge.

A request handler that blocks the loop (a synchronous call in an `async def`, a big JSON
encode) delays every other request and stream on the process. `LoopLag` wakes every
`interval` seconds and records how much later than asked it woke: the last value, the
worst since the last scrape, and a histogram (`/metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Gauge, Histogram

LOOP_LAG = Gauge("nightshift_event_loop_lag_seconds", "How late the API event loop last woke")
LOOP_LAG_MAX = Gauge(
    "nightshift_event_loop_lag_max_seconds",
    "The worst event-loop lag seen since the last scrape of /metrics",
)
LOOP_LAG_HIST = Histogram(
    "nightshift_event_loop_lag_histogram_seconds",
    "How late the API event loop woke, every check",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class LoopLag:
    """Measures the running loop's lag until `stop`; one per API process."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def scraped(self) -> None:
        """/metrics is being read: publish the worst lag since the last read, start again."""
        LOOP_LAG_MAX.set(self.worst)
        self.worst = 0.0

    async def _watch(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - asked - self.interval)
            LOOP_LAG.set(lag)
            LOOP_LAG_HIST.observe(lag)
            self.worst = max(self.worst, lag)
