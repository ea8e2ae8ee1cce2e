"""The event bus of this process's runners (embedded mode): their events are persisted by one
thread, in batches, instead of by a pool thread each.

A runner's `publish` queues the event and waits. The appending thread takes everything queued,
publishes each event through the hub (stored in its session file, the event table's rows run)
with the index values staged rather than written, and hands the batch on. The flushing thread
writes the staged values of every batch it has been handed in one control DB transaction
(`IndexWriter.wait`), then lets the subscribers see the events (the sessions' streams and the
watchers: what a client has seen, a read of the session reflects) and wakes the runners: one
wake-up per runner loop and batch, not one per event.

So a burst of events from hundreds of sessions costs a few threads and a few transactions, not
a thread hand-off, a control DB transaction and a wake-up each, and events keep being stored
while the index write waits for the control DB. A runner's `publish` still returns once its
event is stored and its index values are written, as before.

Publishes that may wait on the network (`EventHub.slow`: a session another process owns, a
`branch_pushed` that opens a PR) do not go through the batch: each runs on a thread of its own
so that it never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from app.services.hub import EventHub
from app.services.session_index import IndexWriter, Staged
from workers.events import Event

log = logging.getLogger("nightshift.events")

MAX_BATCH = 512
"""Events appended before their index values are handed to the flushing thread."""


@dataclass(eq=False)
class _Item:
    session_id: str
    event: Event
    loop: asyncio.AbstractEventLoop
    waiter: asyncio.Future[None]


@dataclass(eq=False)
class _Batch:
    staged: Staged | None
    """The newest index batch its events staged into (None: none)."""
    after_index: list[Callable[[], None]] = field(default_factory=list)
    outcomes: list[tuple[_Item, BaseException | None]] = field(default_factory=list)


class StagedPublishes:
    """Several events published in a row from one thread with one index write for all of
    them: inside `batch()`, `publish` stores and fans out each event at once and stages its
    index values; leaving the batch writes them (one control DB transaction) and only then
    lets the watchers see the events. Outside a batch, `publish` is `EventHub.publish`.

    For the distributed stream consumer's batches (`app/services/streams.py`) and a new
    session's first events (`publish_together`)."""

    def __init__(self, hub: EventHub, index: IndexWriter) -> None:
        self.hub = hub
        self.index = index
        self._local = threading.local()

    def publish(self, session_id: str, event: Event, source: str | None = None) -> Event | None:
        later: list[Callable[[], None]] | None = getattr(self._local, "later", None)
        if later is None:
            return self.hub.publish(session_id, event, source)
        stored, after_index = self.hub.publish_staged(session_id, event, source)
        later.extend(after_index)
        return stored

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        later: list[Callable[[], None]] = []
        self._local.later = later
        self.index.begin_staging()
        try:
            yield
        finally:
            staged = self.index.end_staging()
            self._local.later = None
            try:
                if staged is not None:
                    self.index.wait(staged)
            finally:
                # Also when the index write failed: the events are stored, and their
                # subscribers must hear of them (the hub logs the lost values).
                for push in later:
                    push()


def publish_together(
    hub: EventHub, index: IndexWriter, session_id: str, events: list[Event]
) -> list[Event | None]:
    """Publish several events of one session with one index write (a new session's `queued`
    and its prompt): returns once they are stored and their values written."""
    staged = StagedPublishes(hub, index)
    with staged.batch():
        return [staged.publish(session_id, event) for event in events]


T = TypeVar("T")


def _take(source: queue.SimpleQueue[T | None], most: int | None) -> list[T] | None:
    """Everything queued (waiting for the first, at most `most`); None once the stop mark
    (None) is taken with nothing before it. Items before a stop mark come first; the mark is
    put back, so the next call returns None."""
    first = source.get()
    if first is None:
        return None
    items = [first]
    while most is None or len(items) < most:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            source.put(None)  # stop after these
            break
        items.append(item)
    return items


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for waiter, error in outcomes:
        if waiter.done():  # its publisher was cancelled; the event is stored all the same
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class EventWriter:
    """`workers.bus.EventPublisher` for in-process runners: events stored in batches."""

    def __init__(self, hub: EventHub, index: IndexWriter, max_batch: int = MAX_BATCH) -> None:
        self.hub = hub
        self.index = index
        self.max_batch = max_batch
        self._items: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._state = threading.Lock()
        self._closed = False
        self.batches = 0
        """Batches appended so far."""

    async def publish(self, session_id: str, event: Event) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self.hub.slow(session_id, event) and self._enqueue(
            _Item(session_id, event, loop, waiter)
        ):
            await waiter
        else:
            await asyncio.to_thread(self.hub.publish, session_id, event)

    def _enqueue(self, item: _Item) -> bool:
        with self._state:
            if self._closed:
                return False
            self._start()
            self._items.put(item)
            return True

    def _start(self) -> None:
        if self._threads:
            return
        self._threads = [
            threading.Thread(target=self._append_loop, name="nightshift-events", daemon=True),
            threading.Thread(target=self._flush_loop, name="nightshift-index", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Store what is queued, wake its publishers, and stop; later publishes are stored
        one by one on threads of their own."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            threads, self._threads = self._threads, []
        if threads:
            self._items.put(None)
            for thread in threads:
                thread.join()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------ the appending thread

    def _append_loop(self) -> None:
        while (items := _take(self._items, self.max_batch)) is not None:
            self._batches.put(self._append(items))
        self._batches.put(None)

    def _append(self, items: list[_Item]) -> _Batch:
        self.index.begin_staging()
        after_index: list[Callable[[], None]] = []
        outcomes: list[tuple[_Item, BaseException | None]] = []
        try:
            for item in items:
                try:
                    _, later = self.hub.publish_staged(item.session_id, item.event)
                except Exception as exc:  # its publisher gets it, as from a direct call
                    outcomes.append((item, exc))
                else:
                    after_index.extend(later)
                    outcomes.append((item, None))
        finally:
            staged = self.index.end_staging()
        self.batches += 1
        return _Batch(staged, after_index, outcomes)

    # ------------------------------------------------------------ the flushing thread

    def _flush_loop(self) -> None:
        while (batches := _take(self._batches, None)) is not None:
            self._flush(batches)

    def _flush(self, batches: list[_Batch]) -> None:
        # Index batches are written in order: once the newest is, so are the others.
        staged = next((b.staged for b in reversed(batches) if b.staged is not None), None)
        if staged is not None:
            try:
                self.index.wait(staged)
            except Exception:
                # The events are stored; their index values are lost with this transaction,
                # as they would be for a direct publish (where the hub logs the failed row).
                log.exception("writing the index values of %d event batch(es) failed", len(batches))
        by_loop: defaultdict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]
        ] = defaultdict(list)
        for batch in batches:
            for push in batch.after_index:
                push()
            for item, error in batch.outcomes:
                by_loop[item.loop].append((item.waiter, error))
        for loop, outcomes in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, outcomes)
