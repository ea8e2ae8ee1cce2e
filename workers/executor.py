"""The in-process executor of the embedded default: an asyncio loop on its own thread.

Work submitted here never runs on the API's event loop, so a busy agent cannot slow a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from workers.tuning import watch_children_by_pidfd

T = TypeVar("T")
log = logging.getLogger("nightshift.executor")


BLOCKING_THREADS = 64
"""Threads for the blocking calls runners make (`asyncio.to_thread`: persisting events, the
control plane, file tools). They mostly wait on disk and subprocesses; with asyncio's default
(CPU count + 4) a few hundred sessions would queue behind each other's writes."""


class InProcessExecutor:
    def __init__(self, name: str = "nightshift-worker") -> None:
        watch_children_by_pidfd()  # sandbox commands and git: no thread per child
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix=name)
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._tasks: set[concurrent.futures.Future[Any]] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()  # its self-pipe and thread pool, once nothing runs on it

    def start(self) -> None:
        if self._started:
            return
        if self._thread.ident is not None:
            raise RuntimeError("this executor has been shut down; it takes no more jobs")
        self._started = True
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, factory: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the worker loop; failures are logged, never lost silently."""
        self.start()

        async def guarded() -> T:
            try:
                return await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background job failed")
                raise

        future = asyncio.run_coroutine_threadsafe(guarded(), self._loop)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def call(self, fn: Callable[[], T]) -> None:
        """Run a plain function on the worker loop's thread."""
        self.start()
        self._loop.call_soon_threadsafe(fn)

    def pending(self) -> int:
        return len(self._tasks)

    def shutdown(
        self,
        timeout: float = 10.0,
        last: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Cancel running jobs (their sessions are picked up again after a restart) and stop.

        `last` runs on the loop once the jobs have stopped (closing what they shared, such as
        the model clients): a job never meets a client closed under it."""
        if not self._started or not self._thread.is_alive():
            self._started = False
            self._close()
            return

        late: list[asyncio.Task[Any]] = []

        async def settle() -> None:
            current = asyncio.current_task()
            deadline = self._loop.time() + timeout
            warned = False
            # Until none is left: a job may start another while it stops (publishing its last
            # event), and a task left pending when the loop closes would run its `finally`
            # (releasing a sandbox) with no loop under it.
            while tasks := [t for t in asyncio.all_tasks() if t is not current]:
                for task in tasks:
                    # Once only: a second cancel would interrupt a job's clean-up (releasing
                    # its sandbox) in its `finally`.
                    if not task.cancelling():
                        task.cancel()
                left = deadline - self._loop.time()
                if left <= 0:
                    for task in tasks:
                        log.warning(
                            "job %s did not stop within %.0fs (at %s)",
                            task.get_name(),
                            timeout,
                            _where(task),
                        )
                    late.extend(tasks)
                    return
                _, pending = await asyncio.wait(tasks, timeout=min(2.0, left))
                if pending and not warned:
                    warned = True
                    log.info(
                        "waiting for %d job(s) to stop: %s",
                        len(pending),
                        "; ".join(_where(task) for task in pending),
                    )

        async def settle_then_last() -> None:
            try:
                await settle()
            finally:
                if last is not None:
                    try:
                        await asyncio.wait_for(last(), timeout=5.0)
                    except Exception:
                        log.exception("closing after the executor's jobs failed")

        settling = asyncio.run_coroutine_threadsafe(settle_then_last(), self._loop)
        try:
            settling.result(timeout + 5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            settling.cancel()
            log.warning("executor jobs did not settle within %.0fs", timeout)
        self._started = False
        if late:
            # Stopping the loop under them would leave their clean-up (releasing a sandbox)
            # to the garbage collector, with no loop to run on: they finish first.
            async def stop_when_done() -> None:
                await asyncio.wait(late)
                asyncio.get_running_loop().stop()

            asyncio.run_coroutine_threadsafe(stop_when_done(), self._loop)
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _close(self) -> None:
        """Close the loop of an executor whose thread never ran it."""
        if self._thread.ident is None and not self._loop.is_closed():
            self._loop.close()


def _where(task: asyncio.Task[Any]) -> str:
    """The chain of awaits a task is suspended in, innermost last."""
    chain: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(chain) < 20:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return " > ".join(chain) or "?"


async def every(interval: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `job` every `interval` seconds until cancelled; a failure is logged, not fatal."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic job %s failed", name)
        await asyncio.sleep(interval)
