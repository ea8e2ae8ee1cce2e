"""The event bus: how workers hand events to the control plane that persists them.

In the embedded default the bus is a direct call into `app/`'s writer (so nothing sits only
in memory); in distributed mode it is one Redis stream per session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from workers.events import Event


class EventPublisher(Protocol):
    async def publish(self, session_id: str, event: Event) -> None: ...


class InProcessBus:
    """Calls the persisting sink in a worker thread; returns once the event is stored."""

    def __init__(self, sink: Callable[[str, Event], object]) -> None:
        self._sink = sink

    async def publish(self, session_id: str, event: Event) -> None:
        await asyncio.to_thread(self._sink, session_id, event)
