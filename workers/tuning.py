"""A long-lived process (an API process, a Celery worker process) tuned once it has started.

The garbage collector, settled (`settle_heap`):
- What the process holds for its whole life (modules, the runtime, its caches) is frozen out
  of the cyclic collector's sight: a full collection then walks only what requests and
  sessions allocate, not the few hundred thousand objects of the imports.
- The youngest generation is collected every `YOUNG_THRESHOLD` allocations instead of
  CPython's 700. A request, an event or a model turn allocates hundreds of short-lived
  objects (pydantic models, SQLAlchemy rows, JSON) that reference counting frees at once; at
  700 the collector ran several times per request and walked them anyway. Under a burst of
  200 sessions (`nightshift bench load`) that was about a sixth of the API's CPU. Cycles are
  still collected: a little later, in a generation that stays small.

Child processes, awaited without a thread each (`watch_children_by_pidfd`): Python 3.11's
asyncio starts a thread per child process to wait for it (its `ThreadedChildWatcher`); a
session's sandbox commands and git calls are tens of children each, so under a burst the
runners' loop spent much of its time starting threads. A process's exit is read from a pid
file descriptor on the loop that started it instead, as asyncio does itself from 3.12.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nightshift.tuning")

YOUNG_THRESHOLD = 20_000
"""Allocations (less deallocations) between collections of the youngest generation."""


def settle_heap() -> None:
    """Freeze what the process holds now and space out young collections (see above)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class PidfdChildWatcher(asyncio.AbstractChildWatcher):
    """Waits for each child on the loop that started it, through a pid file descriptor.

    asyncio 3.11's own `PidfdChildWatcher` serves one loop only; an API process runs several
    (the API's, the runners'), so this one takes the running loop of each call, as 3.12's does.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, int]] = {}

    def is_active(self) -> bool:
        return True

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Not bound to a loop: each child is watched on the loop that started it."""

    def close(self) -> None:
        for loop, pidfd in self._waiting.values():
            if not loop.is_closed():
                loop.remove_reader(pidfd)
            os.close(pidfd)
        self._waiting.clear()

    def __enter__(self) -> PidfdChildWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_child_handler(  # type: ignore[override]  # typeshed's variadic generics
        self, pid: int, callback: Callable[..., object], *args: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        self._orphans()
        pidfd = os.pidfd_open(pid)
        self._waiting[pid] = (loop, pidfd)
        loop.add_reader(pidfd, self._exited, pid, pidfd, callback, args)

    def _exited(self, pid: int, pidfd: int, callback: Callable[..., object], args: Any) -> None:
        self._waiting.pop(pid, None)
        asyncio.get_running_loop().remove_reader(pidfd)  # called on the child's own loop
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere
            returncode = 255
            log.warning("child process %d was reaped elsewhere; its exit status is lost", pid)
        else:
            returncode = os.waitstatus_to_exitcode(status)
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def _orphans(self) -> None:
        """Children whose loop closed before they exited (nobody awaited them): reaped here,
        or by a thread of their own while they still run, as the threaded watcher would."""
        for pid, (loop, pidfd) in list(self._waiting.items()):
            if not loop.is_closed():
                continue
            del self._waiting[pid]
            os.close(pidfd)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    threading.Thread(
                        target=_reap, args=(pid,), name="nightshift-reap", daemon=True
                    ).start()

    def remove_child_handler(self, pid: int) -> bool:
        found = self._waiting.pop(pid, None)
        if found is None:
            return False
        loop, pidfd = found
        if not loop.is_closed():
            loop.remove_reader(pidfd)
        os.close(pidfd)
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def watch_children_by_pidfd() -> None:
    """Have asyncio wait for child processes through pid file descriptors (Python 3.11 only;
    3.12 does so already). Idempotent; left as it is where pidfds are missing."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(asyncio.get_child_watcher(), PidfdChildWatcher):
            return
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:  # a kernel before 5.3, or a seccomp profile that refuses it
            return
        asyncio.set_child_watcher(PidfdChildWatcher())
