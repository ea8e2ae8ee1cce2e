"""How many event streams (WebSocket and SSE) each person holds open on this API host.

Every open stream keeps a task, a queue and a hub subscription alive; without a cap one person
(or one leaked token) could open thousands and starve everyone else. Counted per process: the
cap is per API host, which is where the memory is spent.
"""

from __future__ import annotations

import threading
from collections import Counter

from app.errors import TooMany


class StreamSlot:
    """One open stream; `release()` frees it and may be called more than once."""

    def __init__(self, slots: StreamSlots, user_id: int) -> None:
        self._slots = slots
        self.user_id = user_id
        self._released = False

    def release(self) -> None:
        with self._slots.lock:
            if self._released:
                return
            self._released = True
            self._slots.open[self.user_id] -= 1
            if self._slots.open[self.user_id] <= 0:
                del self._slots.open[self.user_id]


class StreamSlots:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self.lock = threading.Lock()
        self.open: Counter[int] = Counter()

    def acquire(self, user_id: int) -> StreamSlot:
        """A slot for one more stream of `user_id`, or TooMany when they hold the maximum."""
        with self.lock:
            if self.open[user_id] >= self.per_user:
                raise TooMany(
                    # short enough for a WebSocket close reason (123 bytes)
                    f"{self.open[user_id]} event streams open, the most allowed "
                    f"(NIGHTSHIFT_MAX_STREAMS_PER_USER={self.per_user}); close one and retry"
                )
            self.open[user_id] += 1
        return StreamSlot(self, user_id)

    def count(self, user_id: int) -> int:
        with self.lock:
            return self.open[user_id]
