"""A file call that hangs in the kernel costs only its sandbox: its caller gets an error at the
timeout, the sandbox can strand at most its slots, and the shared executor never sees it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from images.sandboxes.base import SandboxFileError
from images.sandboxes.offload import FileWorkers


async def test_a_hung_call_times_out_and_strands_no_more_than_the_slots() -> None:
    read_end, write_end = os.pipe()  # a read with no writer blocks like a FIFO did
    workers = FileWorkers("hung", slots=2, timeout=0.2)
    other = FileWorkers("other", slots=2, timeout=0.2)
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(SandboxFileError, match=r"no answer within 0\.2 s"):
                await workers.run("trap", os.read, read_end, 1)
            assert time.monotonic() - started < 2
        assert workers.busy == 2
        with pytest.raises(SandboxFileError, match="have not returned"):
            await workers.run("trap", os.read, read_end, 1)
        # Another sandbox and the loop's shared executor are untouched.
        assert await other.run("ok", lambda: "fine") == "fine"
        assert await asyncio.to_thread(lambda: "shared") == "shared"
    finally:
        os.write(write_end, b"xx")  # the stranded threads return and give their slots back
        for _ in range(100):
            if workers.busy == 0:
                break
            await asyncio.sleep(0.02)
        os.close(read_end)
        os.close(write_end)
    assert workers.busy == 0
    assert await workers.run("again", lambda: 42) == 42


async def test_errors_and_cancellation_reach_the_caller() -> None:
    workers = FileWorkers("errors")
    with pytest.raises(SandboxFileError, match="boom"):
        await workers.run("x", _raise)
    read_end, write_end = os.pipe()
    task = asyncio.ensure_future(workers.run("x", os.read, read_end, 1))
    await asyncio.sleep(0.05)
    task.cancel()  # a stopped session's tool call
    with pytest.raises(asyncio.CancelledError):
        await task
    os.write(write_end, b"x")
    for _ in range(100):
        if workers.busy == 0:
            break
        await asyncio.sleep(0.02)
    assert workers.busy == 0
    os.close(read_end)
    os.close(write_end)


def _raise() -> None:
    raise SandboxFileError("boom")


async def test_calls_reuse_the_threads_of_earlier_ones() -> None:
    from images.sandboxes.offload import _THREADS

    workers = FileWorkers("reuse")
    assert await workers.run("warm", lambda: 0) == 0
    await asyncio.sleep(0.05)  # the warm call's thread is waiting for the next one
    before = _THREADS.started
    for i in range(50):  # one after another: the same waiting thread each time
        assert await workers.run("read", lambda i=i: i) == i
    # Many at once: no call waits for another's thread.
    read_end, write_end = os.pipe()
    blocked = [asyncio.ensure_future(workers.run("trap", os.read, read_end, 1)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert await FileWorkers("other").run("ok", lambda: "fine") == "fine"
    os.write(write_end, b"xyz")
    assert sorted(await asyncio.gather(*blocked)) == [b"x", b"y", b"z"]
    os.close(read_end)
    os.close(write_end)
    # 50 sequential calls on the waiting thread, then at most a thread per call in flight.
    assert _THREADS.started - before <= 4
