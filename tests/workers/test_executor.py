"""The in-process executor: jobs run on its loop, shutdown cancels them, and a shut-down
executor refuses new work instead of queueing it on a loop that no longer runs."""

from __future__ import annotations

import asyncio
import logging
import threading
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


def test_a_job_slower_to_stop_than_the_timeout_finishes_its_clean_up_on_a_live_loop() -> None:
    """Its `finally` awaits a thread (as releasing a sandbox does): the loop stays up until it
    is done, then closes, instead of leaving it to the garbage collector with no loop."""
    executor = InProcessExecutor("test-executor")
    release = threading.Event()
    released = threading.Event()

    async def job() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.to_thread(release.wait, 30)
            released.set()

    executor.submit(job)
    time.sleep(0.05)
    executor.shutdown(timeout=0.2)  # returns while the job still cleans up
    assert not released.is_set()
    release.set()
    assert released.wait(30)
    executor._thread.join(30)
    assert executor.loop.is_closed()


def test_shutting_down_an_executor_that_never_ran_closes_its_loop() -> None:
    executor = InProcessExecutor("test-executor")
    executor.shutdown()
    assert executor.loop.is_closed()
