"""Child processes are awaited through pid file descriptors on the loop that started them,
not by a thread each (`workers/tuning.py`); several loops on several threads at once, as in
an API process (the API's loop, the runners')."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from pathlib import Path

import pytest

from workers.executor import InProcessExecutor
from workers.tuning import PidfdChildWatcher, watch_children_by_pidfd

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="asyncio waits through pidfds itself from 3.12"
)


def _waiting_threads() -> list[str]:
    # asyncio 3.11's ThreadedChildWatcher names its threads so.
    return [t.name for t in threading.enumerate() if t.name.startswith("waitpid-")]


async def _children() -> tuple[list[int | None], list[str]]:
    async def run(script: str) -> int | None:
        proc = await asyncio.create_subprocess_exec("sh", "-c", script)
        return await proc.wait()

    slow = asyncio.ensure_future(run("sleep 0.3"))
    await asyncio.sleep(0.1)
    seen = _waiting_threads()  # while a child is running
    codes = await asyncio.gather(run("exit 3"), run("kill -9 $$"), run("true"), slow)
    return list(codes), seen


def test_an_executor_awaits_its_children_without_a_thread_each() -> None:
    executor = InProcessExecutor("test-children")
    try:
        assert isinstance(asyncio.get_child_watcher(), PidfdChildWatcher)
        codes, seen = executor.submit(_children).result(30)
    finally:
        executor.shutdown(timeout=5)
    assert codes == [3, -9, 0, 0]
    assert seen == []


def test_children_of_several_loops_at_once() -> None:
    watch_children_by_pidfd()
    watch_children_by_pidfd()  # idempotent
    results: dict[int, tuple[list[int | None], list[str]]] = {}

    def on_its_own_loop(i: int) -> None:
        results[i] = asyncio.run(_children())

    threads = [threading.Thread(target=on_its_own_loop, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: ([3, -9, 0, 0], []) for i in range(3)}


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # what the test does on purpose
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_child_left_behind_by_a_closed_loop_is_reaped() -> None:
    watch_children_by_pidfd()

    async def leave() -> int:
        proc = await asyncio.create_subprocess_exec("sleep", "0.2")
        return proc.pid  # never awaited

    loop = asyncio.new_event_loop()
    pid = loop.run_until_complete(leave())
    loop.close()
    assert asyncio.run(_children())[0] == [3, -9, 0, 0]  # the next child anywhere sweeps
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists(), "left a zombie"
    # The abandoned process object and transport warn when collected: here, not in a later test.
    gc.collect()
