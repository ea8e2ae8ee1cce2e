"""Blocking file work of one sandbox, run off the event loop and bounded in time and threads.

The file tools of local sandboxes are system calls on a tree that sandboxed code controls.
`pathsafe` opens nothing that can block, but should a call ever hang in the kernel, it must
cost only the sandbox that caused it: each call runs on a daemon thread of its own while it
runs (never on the loop's default executor, which every session shares), a sandbox has at
most `slots` calls in flight, and the caller gets an error after `timeout` seconds whether
or not the thread has returned. A thread that never returns keeps its slot, so a sandbox can
strand at most `slots` threads, and its later calls fail at once instead of piling up more.

The threads are `_Threads`: one that has returned waits a little for the next call (of any
sandbox) instead of ending, so a burst of file calls does not start a thread for each (the
runners' loop waited for every start). No call ever waits for a busy thread: when none is
idle, a new one starts; a stranded thread only takes itself out.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from images.sandboxes.base import SandboxFileError

T = TypeVar("T")

FILE_TIMEOUT_S = 30.0
"""How long one file tool call may take (read, write, list) before its caller gets an error."""
FILE_SLOTS = 4
IDLE_S = 10.0
"""How long a thread that has returned waits for another call before it ends."""


class _Threads:
    """Daemon threads that run one call at a time and wait `idle_s` for the next one.

    `idle` counts threads waiting for a call, less the calls already queued for them: a call
    that finds it above zero is taken by one of them; otherwise it starts a thread. Both
    sides change it under the lock with the queue, so a thread that gives up waiting never
    leaves a call behind.
    """

    def __init__(self, idle_s: float = IDLE_S) -> None:
        self.idle_s = idle_s
        self.idle = 0
        self.started = 0
        """Threads started so far (for tests)."""
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            self._calls.put(call)
            if self.idle > 0:
                self.idle -= 1
                return
            self.started += 1
        threading.Thread(target=self._serve, name="nightshift-file", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():
                        self.idle -= 1
                        return
                continue  # a call came as the wait ended: it is this thread's
            call()
            with self._lock:
                self.idle += 1


_THREADS = _Threads()


class FileWorkers:
    """Runs one sandbox's blocking file calls; see the module docstring."""

    def __init__(
        self, label: str, slots: int = FILE_SLOTS, timeout: float = FILE_TIMEOUT_S
    ) -> None:
        self.label = label
        self.slots = slots
        self.timeout = timeout
        self.busy = 0
        """Calls whose thread has not returned yet (touched on the event loop only)."""

    async def run(
        self, what: str, fn: Callable[..., T], *args: Any, timeout: float | None = None
    ) -> T:
        """`fn(*args)` on a thread of its own; SandboxFileError naming `what` on a timeout."""
        if self.busy >= self.slots:
            raise SandboxFileError(
                f"{what}: {self.busy} earlier file operations of this sandbox have not "
                "returned; file tools are refused until they do"
            )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self.busy += 1

        def settle(ok: bool, value: Any) -> None:
            self.busy -= 1
            if done.done():  # the caller timed out or was cancelled
                return
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        def work() -> None:
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, *outcome)

        _THREADS.submit(work)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(done, limit)
        except TimeoutError:
            raise SandboxFileError(
                f"{what}: no answer within {limit:g} s; the operation was abandoned"
            ) from None
