"""The in-process executor: jobs run on its loop, shutdown cancels them, and a shut-down
executor refuses new work instead of queueing it on a loop that no longer runs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from workers.executor import InProcessExecutor


def test_jobs_run_and_shutdown_cancels_what_still_runs() -> None:
    executor = InProcessExecutor("test-executor")
    assert executor.submit(lambda: asyncio.sleep(0, result=42)).result(5) == 42
    cleaned: list[str] = []

    async def long_job() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("released")

    future = executor.submit(long_job)
    time.sleep(0.05)
    executor.shutdown(timeout=5)
    assert future.cancelled() and cleaned == ["released"]


def test_a_shut_down_executor_refuses_jobs_and_shuts_down_again_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor = InProcessExecutor("test-executor")
    executor.submit(lambda: asyncio.sleep(0)).result(5)
    executor.shutdown(timeout=5)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(lambda: asyncio.sleep(0))
    with caplog.at_level(logging.WARNING, logger="nightshift.executor"):
        executor.shutdown(timeout=0.2)  # nothing to settle: no wait on a loop that is gone
    assert not caplog.records
