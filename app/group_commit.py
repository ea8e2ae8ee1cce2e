"""Group commit: writes that arrive together share one transaction.

Callers add their part to the pending batch and wait for it to be written. The first caller
to find no batch being written writes the pending one, with everything added to it so far;
callers that arrive meanwhile add to the next batch, and the next of them to find the writer
free writes that one. Every caller of a batch hears its outcome: the writer's result, or the
exception that failed it. Batches are written one at a time, in the order they were begun,
so once a batch is written every batch before it is too.

Each batch has its own condition (on the one lock), so writing a batch wakes its own callers
and one caller of the next batch (who writes it), not every waiting thread: with dozens of
threads waiting on a batch, waking all of them for every batch before theirs only had them
queue for the GIL and go back to sleep.

Used for the control DB's session index (`app/services/session_index.py`) and lease renewals
(`app/services/leases.py`): under a burst the DB sees a few transactions instead of one per
caller, and its write lock is held that much less.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

P = TypeVar("P")
"""What a batch holds while it is pending (a dict of rows to write, say)."""
R = TypeVar("R")
"""What writing a batch returns."""


class Batch(Generic[P, R]):
    """One transaction's worth of additions, and, once written, its outcome."""

    __slots__ = ("_error", "_result", "done", "items", "written")

    def __init__(self, items: P, lock: threading.Lock) -> None:
        self.items = items
        self.done = False
        self.written = threading.Condition(lock)
        """Its callers wait here: for it to be written, or for their turn to write it."""
        self._result: R | None = None
        self._error: Exception | None = None

    def outcome(self) -> R:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set with done


class GroupCommit(Generic[P, R]):
    """`add` puts a caller's part into the pending batch, `wait` returns once that batch is
    written (writing it when nobody else is writing)."""

    def __init__(self, empty: Callable[[], P], write: Callable[[P], R]) -> None:
        self._empty = empty
        self._write = write
        self._lock = threading.Lock()
        self._pending: Batch[P, R] = Batch(empty(), self._lock)
        self._writing = False
        self.batches = 0
        """Batches written so far (failed ones too)."""
        self.idle_wakeups = 0
        """Callers woken to find their batch neither written nor theirs to write."""

    def pending(self) -> P:
        """The items of the batch that is not yet being written (to look at, not to change)."""
        with self._lock:
            return self._pending.items

    def add(self, put: Callable[[P], None]) -> Batch[P, R]:
        """Run `put` on the pending batch's items, under the lock; returns that batch."""
        with self._lock:
            put(self._pending.items)
            return self._pending

    def wait(self, batch: Batch[P, R]) -> R:
        """Return `batch`'s outcome once it is written: write it (with everything added to it
        since) when no other caller is writing, else wait for the one who is."""
        with self._lock:
            woken = False
            while not batch.done:
                if not self._writing:
                    break
                if woken:
                    self.idle_wakeups += 1
                batch.written.wait()
                woken = True
            else:
                return batch.outcome()
            # Not written and nobody writing: every batch before the pending one is written,
            # so `batch` is the pending one.
            self._writing = True
            taking, self._pending = self._pending, Batch(self._empty(), self._lock)
        try:
            taking._result = self._write(taking.items)
        except Exception as exc:  # every caller of the batch hears it
            taking._error = exc
        with self._lock:
            taking.done = True
            self._writing = False
            self.batches += 1
            taking.written.notify_all()  # its callers return
            self._pending.written.notify()  # a caller of the next one writes it
        return taking.outcome()

    def commit(self, put: Callable[[P], None]) -> R:
        """`add` then `wait`."""
        return self.wait(self.add(put))
