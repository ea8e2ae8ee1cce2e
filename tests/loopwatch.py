"""Find callbacks that block an asyncio event loop, on a loaded machine as on an idle one.

`LoopWatch(thread_ident)` times every callback the loop on that thread runs (asyncio's
`Handle._run`, so the loop must be asyncio's, not uvloop's) two ways, neither of which
drifts with what other processes do to the cores:
- the CPU time its thread spent in the callback (`time.thread_time`): a callback that
  computes for more than `cpu_ms` blocks the loop;
- the wall time less the time the thread waited for a CPU (`/proc/thread-self/schedstat`,
  second field): computing plus sleeping. Sleeping includes blocking calls, but also
  waiting for the GIL while other threads of the process run (the embedded default runs
  agents on a thread of the API process), so its bar (`held_ms`) is higher.

A callback held with little CPU is told apart from one that waited for the GIL by how the
thread slept: a blocking call sleeps once (or a few times), while a thread waiting for the
GIL wakes every switch interval (5 ms) to ask for it again. Such a callback, or one whose
thread waited for the host to page memory back in (a major fault), goes to `starved`, not
`blocked`: it did not hold the loop, another thread or the host did. CI once saw asyncio's
own connection accept held 982 ms with 2 ms of CPU that way.
"""

from __future__ import annotations

import asyncio.events
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_SCHEDSTAT = "/proc/thread-self/schedstat"


def _run_queue_ns() -> int:
    with open(_SCHEDSTAT) as f:
        return int(f.read().split()[1])


def _describe(handle: asyncio.events.Handle) -> str:
    """The coroutine a task step ran (its qualified name and where it is suspended now)."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    get_coro = getattr(task, "get_coro", None)
    if get_coro is None:
        return repr(handle)
    coro = get_coro()
    frame = getattr(coro, "cr_frame", None)
    where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
    owner = frame.f_locals.get("self") if frame is not None else None
    scope = getattr(owner, "scope", None)  # a request cycle: name the request
    if isinstance(scope, dict):
        where = f" serving {scope.get('method', 'WS')} {scope.get('path')}{where}"
    return f"task {task.get_name()}: {getattr(coro, '__qualname__', coro)}{where}"


@dataclass
class Blocked:
    cpu_ms: float
    """CPU time the loop's thread spent in the callback."""
    held_ms: float
    """Time the callback held the loop, less time spent waiting for a CPU: computing,
    sleeping in a blocking call, or waiting for the GIL other threads of the process hold."""
    callback: str


def _sleeps_and_faults() -> tuple[int, int]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_nvcsw, usage.ru_majflt


def _waited_for_others(held_ms: float, sleeps: int, faults: int) -> bool:
    """Whether a callback's time off the CPU went to the GIL or the host, not a call it made.

    A thread waiting for the GIL wakes every switch interval; half that rate is the bar, so a
    callback that slept once for 400 ms stays `blocked`.
    """
    interval_ms = sys.getswitchinterval() * 1000
    return faults > 0 or sleeps >= held_ms / (2 * interval_ms)


@dataclass
class LoopWatch:
    thread_ident: int
    cpu_ms: float = 50.0
    held_ms: float = 250.0
    blocked: list[Blocked] = field(default_factory=list)
    starved: list[Blocked] = field(default_factory=list)
    """Callbacks held off the CPU by other threads holding the GIL, or by the host paging."""
    callbacks: int = 0
    _original: Callable[..., Any] | None = None
    _running: bool = False

    def __enter__(self) -> LoopWatch:
        original = self._original = asyncio.events.Handle._run
        watch = self

        def timed_run(handle: asyncio.events.Handle) -> None:
            if threading.get_ident() != watch.thread_ident:
                original(handle)
                return
            watch._running = True
            described = _describe(handle)  # before: a finished coroutine has no frame left
            wall = time.perf_counter_ns()
            cpu = time.thread_time_ns()
            waited = _run_queue_ns()
            sleeps, faults = _sleeps_and_faults()
            try:
                original(handle)
            finally:
                watch._running = False
                computed = (time.thread_time_ns() - cpu) / 1e6
                held = ((time.perf_counter_ns() - wall) - (_run_queue_ns() - waited)) / 1e6
                watch.callbacks += 1
                if computed > watch.cpu_ms or held > watch.held_ms:
                    found = Blocked(round(computed, 1), round(held, 1), described)
                    now_sleeps, now_faults = _sleeps_and_faults()
                    if computed <= watch.cpu_ms and _waited_for_others(
                        held, now_sleeps - sleeps, now_faults - faults
                    ):
                        watch.starved.append(found)
                    else:
                        watch.blocked.append(found)

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        # A callback may still be running on the loop (a handler goes on after its response
        # has been sent): let it finish, so its time is counted.
        deadline = time.monotonic() + 10
        while self._running and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self._original is not None
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
