"""Presence: who is looking at a session right now.

A viewer is present while one of their connections is: a WebSocket stream holds its place
until it closes; a client on SSE or polling sends a heartbeat and is forgotten `ttl` seconds
after its last one. Presence lives in the memory of the API process that owns the session (a
session's streams all reach that host), is never persisted and is never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from app.models import User
from app.schemas import ViewerPublic

DEFAULT_TTL_S = 30.0


@dataclass
class _Connection:
    user_id: int
    login: str
    name: str
    since: float
    expires_at: float | None
    """None while a stream holds the connection open; a deadline for heartbeats."""


@dataclass(eq=False)
class _Listener:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the listener's loop is closing
            self.loop.call_soon_threadsafe(self.wake.set)


class Presence:
    def __init__(
        self, ttl: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._conns: defaultdict[str, dict[str, _Connection]] = defaultdict(dict)
        self._listeners: defaultdict[str, set[_Listener]] = defaultdict(set)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ connections

    def join(self, session_id: str, user: User) -> str:
        """Hold a place for an open stream until `leave`; returns the connection's key."""
        key = f"stream:{next(self._ids)}"
        self._put(session_id, key, user, None)
        return key

    def heartbeat(self, session_id: str, user: User, client_id: str) -> list[ViewerPublic]:
        """Keep a polling client present for `ttl` more seconds; returns who is viewing."""
        self._put(session_id, f"client:{user.id}:{client_id}", user, self.clock() + self.ttl)
        return self.viewers(session_id)

    def leave(self, session_id: str, key: str) -> None:
        with self._lock:
            conns = self._conns.get(session_id)
            if conns is None or conns.pop(key, None) is None:
                return
            if not conns:
                del self._conns[session_id]
        self._notify(session_id)

    def leave_client(self, session_id: str, user: User, client_id: str) -> None:
        self.leave(session_id, f"client:{user.id}:{client_id}")

    def _put(self, session_id: str, key: str, user: User, expires_at: float | None) -> None:
        assert user.id is not None
        with self._lock:
            conns = self._conns[session_id]
            existing = conns.get(key)
            conns[key] = _Connection(
                user_id=user.id,
                login=user.login,
                name=user.name,
                since=existing.since if existing else time.time(),
                expires_at=expires_at,
            )
            changed = existing is None
        if changed:
            self._notify(session_id)

    # ------------------------------------------------------------ reading

    def _prune(self, session_id: str) -> float | None:
        """Drop expired heartbeats (caller holds the lock); returns the next expiry, if any."""
        conns = self._conns.get(session_id)
        if not conns:
            return None
        now = self.clock()
        for key in [
            k for k, c in conns.items() if c.expires_at is not None and c.expires_at <= now
        ]:
            del conns[key]
        if not conns:
            del self._conns[session_id]
            return None
        deadlines = [c.expires_at for c in conns.values() if c.expires_at is not None]
        return min(deadlines) if deadlines else None

    def viewers(self, session_id: str) -> list[ViewerPublic]:
        """One entry per person, in the order they arrived."""
        with self._lock:
            self._prune(session_id)
            conns = list(self._conns.get(session_id, {}).values())
        people: dict[int, ViewerPublic] = {}
        for conn in sorted(conns, key=lambda c: c.since):
            viewer = people.get(conn.user_id)
            if viewer is None:
                people[conn.user_id] = ViewerPublic(
                    login=conn.login, name=conn.name, since=conn.since, connections=1
                )
            else:
                viewer.connections += 1
        return list(people.values())

    def sessions_viewed(self) -> int:
        with self._lock:
            return len(self._conns)

    # ------------------------------------------------------------ watching

    def _notify(self, session_id: str) -> None:
        with self._lock:
            listeners = list(self._listeners.get(session_id, ()))
        for listener in listeners:
            listener.notify()

    async def watch(self, session_id: str) -> AsyncIterator[list[ViewerPublic]]:
        """The viewers now, then again whenever they change (joins, leaves, expiries)."""
        listener = _Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners[session_id].add(listener)
        last: list[ViewerPublic] | None = None
        try:
            while True:
                listener.wake.clear()
                with self._lock:
                    next_expiry = self._prune(session_id)
                current = self.viewers(session_id)
                if current != last:
                    last = current
                    yield current
                timeout = None if next_expiry is None else max(0.0, next_expiry - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.wake.wait(), timeout)
        finally:
            with self._lock:
                listeners = self._listeners.get(session_id)
                if listeners is not None:
                    listeners.discard(listener)
                    if not listeners:
                        del self._listeners[session_id]
