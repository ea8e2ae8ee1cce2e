"""Who is looking at a program a session's sandbox runs for people (its desktop, its IDE).

Such a program costs the sandbox memory and processes while no one looks at it, so it is
stopped after NIGHTSHIFT_IDE_IDLE_SECONDS with no viewer: no open WebSocket, and no request
through the proxy in that time. It also ends with the sandbox, being one of its commands.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Attendance:
    """The viewers of one running program, and when the last one was seen."""

    idle_s: float
    viewers: int = 0
    last_seen: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        """Someone used it just now (a request through the proxy)."""
        self.last_seen = time.monotonic()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Someone watches it for as long as this block lasts (an open WebSocket)."""
        self.viewers += 1
        self.touch()
        try:
            yield
        finally:
            self.viewers -= 1
            self.touch()

    def idle(self) -> bool:
        return self.viewers <= 0 and time.monotonic() - self.last_seen > self.idle_s


async def stop_when_idle(
    attendance: Attendance,
    alive: Callable[[], bool],
    stop: Callable[[], Awaitable[None]],
) -> None:
    """Stop the program once it has gone `idle_s` without a viewer; return when it ends."""
    period = min(5.0, max(0.05, attendance.idle_s / 4))
    while alive():
        await asyncio.sleep(period)
        if attendance.idle():
            await stop()
            return
