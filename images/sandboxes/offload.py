"""Blocking file work of one sandbox, run off the event loop and bounded in time and threads.

The file tools of local sandboxes are system calls on a tree that sandboxed code controls.
`pathsafe` opens nothing that can block, but should a call ever hang in the kernel, it must
cost only the sandbox that caused it: each call runs on its own daemon thread (never on the
loop's default executor, which every session shares), a sandbox has at most `slots` calls in
flight, and the caller gets an error after `timeout` seconds whether or not the thread has
returned. A thread that never returns keeps its slot, so a sandbox can strand at most `slots`
threads, and its later calls fail at once instead of piling up more.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from images.sandboxes.base import SandboxFileError

T = TypeVar("T")

FILE_TIMEOUT_S = 30.0
"""How long one file tool call may take (read, write, list) before its caller gets an error."""
FILE_SLOTS = 4


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

        threading.Thread(target=work, name=f"nightshift-file-{self.label}", daemon=True).start()
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(done, limit)
        except TimeoutError:
            raise SandboxFileError(
                f"{what}: no answer within {limit:g} s; the operation was abandoned"
            ) from None
