"""The event hub: persist an event in its session file, apply it to the index, fan it out.

Publishing holds a per-session lock while it stores an event and runs the event table; the
event goes out to subscribers once its index values are written (at once, or when a staged
batch's are), so a client that has seen an event reads a session that reflects it.
Subscribers replay what is stored after their last id before they get live events, and fill
any gap from the file: every stream is in id order, and a client that resumes with `after=N`
misses nothing and sees nothing twice.

Which services act on which events is not decided here: the composition root
(`app/runtime.py` `event_handlers`) hands the hub its table of `On` rows at construction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from app.services.peers import SessionPeers
from app.sessionstore import SessionFiles
from workers.events import Event, parse_event

log = logging.getLogger("nightshift.hub")

Handler = Callable[[str, Event], None]


@dataclass(frozen=True)
class On:
    """One row of the event table: `handler` gets the events of `types` (None: every event).

    Handlers run in the publisher's thread, in table order, under the session's publish lock,
    so they see a session's events in id order. An `after_lock` handler runs later: once the
    outermost publish of this thread has released its lock, still before that publish returns
    (for slow work such as opening a PR over the network). An `after_index` handler reads what
    the index says: in a staged publish (whose index values are written at the end of its
    batch) it runs once they are, in order, before the subscribers hear of the event.
    """

    types: frozenset[str] | None
    handler: Handler
    after_lock: bool = False
    after_index: bool = False


def _guarded(handler: Handler, session_id: str, event: Event) -> None:
    try:
        handler(session_id, event)
    except Exception:
        log.exception("event handler failed for %s event %s", session_id, event.id)


class Inbox:
    """What other threads hand to one event loop's subscribers, delivered in one callback.

    Publishing threads push many events at once (a batch of the event writer, a burst of
    sessions): each push wakes the loop only when nothing is waiting for it already, so the
    loop wakes once per burst instead of once per event and subscriber.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue[tuple[str, Event]], tuple[str, Event]]] = []
        self._lock = threading.Lock()

    def put(self, queue: asyncio.Queue[tuple[str, Event]], item: tuple[str, Event]) -> None:
        with self._lock:
            self._items.append((queue, item))
            if len(self._items) > 1:
                return  # a delivery is already on its way
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # a closed loop: its subscribers are going away
            with self._lock:
                self._items.clear()

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = weakref.WeakKeyDictionary()
_inboxes_guard = threading.Lock()


def inbox_of(loop: asyncio.AbstractEventLoop) -> Inbox:
    with _inboxes_guard:
        inbox = _inboxes.get(loop)
        if inbox is None:
            inbox = _inboxes[loop] = Inbox(loop)
        return inbox


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, Event]] = field(default_factory=asyncio.Queue)
    types: frozenset[str] | None = None
    inbox: Inbox = field(init=False)

    def __post_init__(self) -> None:
        self.inbox = inbox_of(self.loop)

    def push(self, session_id: str, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        self.inbox.put(self.queue, (session_id, event))


class EventHub:
    def __init__(
        self,
        files: SessionFiles,
        table: Callable[[], Sequence[On]] = lambda: (),
        peers: SessionPeers | None = None,
    ) -> None:
        """`table` returns the event table; it is read once, at the first publish, because
        the services it names publish through this hub and so are built after it. With
        `peers` (several API processes) an event of a session another process owns is sent
        to that process to publish."""
        self.files = files
        self.peers = peers
        self._table = table
        self._routes: list[Handler] | None = None
        self._slow_types: frozenset[str] = frozenset()
        self._every_type_slow = False
        self.handlers: list[Handler] = []
        """Handlers called after the table's (tests listen here)."""
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._subs: defaultdict[str, set[Subscriber]] = defaultdict(set)
        self._all: set[Subscriber] = set()
        self._guard = threading.Lock()
        self._local = threading.local()
        self._unindexed: dict[str, deque[int]] = {}
        """Per session, the ids of stored events whose index values are not written yet."""

    def lock(self, session_id: str) -> threading.RLock:
        """The session's publish lock: hold it to act on the index without racing its events."""
        with self._guard:
            return self._locks[session_id]

    def publish(self, session_id: str, event: Event, source: str | None = None) -> Event | None:
        """Store, fan out and apply one event; None when `source` was already stored.

        Work a handler defers (`defer`) runs after the session's lock is released, still before
        this call returns, so slow side effects (opening a PR over the network) never hold up
        the session's other events.
        """
        if self.peers is not None and (peer := self.peers.local(session_id)) is not None:
            body = {"event": event.model_dump(mode="json"), "source": source}
            answer = self.peers.call(peer, session_id, "events", body)
            return parse_event(answer["event"]) if answer.get("event") else None
        outermost = getattr(self._local, "deferred", None) is None
        if outermost:
            self._local.deferred = []
        try:
            with self._guard:
                lock = self._locks[session_id]
            with lock:
                stored = self.files.get(session_id).append(event, source)
                if stored is None:
                    return None
                assert stored.id is not None
                with self._guard:
                    self._unindexed.setdefault(session_id, deque()).append(stored.id)
                for handler in self._table_handlers() + self.handlers:
                    try:
                        handler(session_id, stored)
                    except Exception:
                        log.exception("event handler failed for %s event %s", session_id, stored.id)
                with self._guard:
                    targets = [*self._subs.get(session_id, ()), *self._all]
                # A client that has seen an event reads a session that reflects it: the
                # session's streams and the watchers (the sessions list's changes feed) get
                # it, and the session's event list shows it, once its index values are
                # written, here or, for a staged publish, when the batch's are.
                self._after_index(session_id, stored, targets)
                return stored
        finally:
            if outermost:
                deferred, self._local.deferred = self._local.deferred, None
                for job in deferred:
                    try:
                        job()
                    except Exception:
                        log.exception("deferred work after a %s event failed", session_id)

    def _after_index(self, session_id: str, stored: Event, targets: list[Subscriber]) -> None:
        def push() -> None:
            with self._guard:
                pending = self._unindexed.get(session_id)
                if pending is not None:
                    pending.remove(stored.id)
                    if not pending:
                        del self._unindexed[session_id]
            for sub in targets:
                sub.push(session_id, stored)

        later = getattr(self._local, "later", None)
        if later is None:
            push()
        else:
            later.append(push)

    def listed_until(self, session_id: str) -> int | None:
        """The last event id a read of the session's event list may show: the one before the
        oldest stored event whose index values are not written yet (None: every stored one)."""
        with self._guard:
            pending = self._unindexed.get(session_id)
            return pending[0] - 1 if pending else None

    def publish_staged(
        self, session_id: str, event: Event, source: str | None = None
    ) -> tuple[Event | None, list[Callable[[], None]]]:
        """`publish` for the event writer (`app/services/event_writer.py`), on a thread whose
        index values are staged (`IndexWriter.begin_staging`): returns the stored event and
        what to run once the staged values are written (the watchers' pushes)."""
        self._local.later = []
        try:
            return self.publish(session_id, event, source), self._local.later
        finally:
            self._local.later = None

    def slow(self, session_id: str, event: Event) -> bool:
        """Whether publishing `event` may wait on the network: a session another process owns
        (sent to it), or a row that runs after the lock (opening a PR). The event writer
        leaves those to a thread of their own."""
        if self.peers is not None and self.peers.local(session_id) is not None:
            return True
        self._table_handlers()  # reads the table (and so the slow rows) on first use
        return self._every_type_slow or event.type in self._slow_types

    def _table_handlers(self) -> list[Handler]:
        routes = self._routes
        if routes is None:
            with self._guard:
                if self._routes is None:
                    rows = list(self._table())
                    slow = [row.types for row in rows if row.after_lock]
                    self._every_type_slow = any(types is None for types in slow)
                    self._slow_types = frozenset(t for types in slow for t in types or ())
                    self._routes = [self._route(row) for row in rows]
                routes = self._routes
        return routes

    def _route(self, row: On) -> Handler:
        if row.types is None and not row.after_lock and not row.after_index:
            return row.handler
        types, handler, after_lock, after_index = (
            row.types,
            row.handler,
            row.after_lock,
            row.after_index,
        )

        def route(session_id: str, event: Event) -> None:
            if types is not None and event.type not in types:
                return
            later = getattr(self._local, "later", None) if after_index else None
            if after_lock:
                self.defer(lambda: handler(session_id, event))
            elif later is not None:
                later.append(lambda: _guarded(handler, session_id, event))
            else:
                handler(session_id, event)

        return route

    def defer(self, job: Callable[[], None]) -> None:
        """Run `job` once the current publish has released its lock (at once outside one)."""
        deferred = getattr(self._local, "deferred", None)
        if deferred is None:
            job()
        else:
            deferred.append(job)

    def _add(self, session_id: str | None, sub: Subscriber) -> None:
        with self._guard:
            (self._all if session_id is None else self._subs[session_id]).add(sub)

    def _remove(self, session_id: str | None, sub: Subscriber) -> None:
        with self._guard:
            if session_id is None:
                self._all.discard(sub)
            else:
                subs = self._subs.get(session_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[session_id]

    def subscriber_count(self, session_id: str) -> int:
        with self._guard:
            return len(self._subs.get(session_id, ()))

    async def stream(self, session_id: str, after: int = 0) -> AsyncGenerator[Event, None]:
        """Every event with id > `after`, stored ones first, then live ones, forever."""
        sub = Subscriber(asyncio.get_running_loop())
        self._add(session_id, sub)
        last = after
        try:
            # Opening a session file that is not open yet is file I/O: off the event loop.
            store = await asyncio.to_thread(self.files.get, session_id)
            while True:
                backlog = await asyncio.to_thread(store.events, last, 1000)
                for event in backlog:
                    yield event
                    last = event.id
                if len(backlog) < 1000:
                    break
            while True:
                _, event = await sub.queue.get()
                if event.id <= last:
                    continue
                if event.id > last + 1:  # a gap: fetch what we missed from the file
                    for missed in await asyncio.to_thread(store.events, last, event.id - last - 1):
                        yield missed
                        last = missed.id
                yield event
                last = event.id
        finally:
            self._remove(session_id, sub)

    async def watch(
        self, types: frozenset[str] | None = None
    ) -> AsyncGenerator[tuple[str, Event], None]:
        """Live events of every session (optionally only some types), e.g. status changes."""
        sub = Subscriber(asyncio.get_running_loop(), types=types)
        self._add(None, sub)
        try:
            while True:
                yield await sub.queue.get()
        finally:
            self._remove(None, sub)
