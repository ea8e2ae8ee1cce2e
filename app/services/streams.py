"""The API side of the distributed event bus: read every session's Redis stream, persist each
event through the hub (session file first, then index and fan-out), remember how far we got.

Discovery: workers add a session to a Redis set when they publish to its stream and ring a
doorbell stream (an entry per session per batch); a blocking `XREAD` waits on the doorbell
alone and one more reads the streams it named, so an event is persisted as soon as it lands
and a read costs what was published, not how many sessions are active; every `refresh_s`, a
read of every active stream takes what no ring announced. Reading runs ahead of persisting:
a read's entries join their session's queue, which one pool thread at a time persists in
order (sessions in parallel), while the next read goes on from the last entry read. After a
read that found entries the next waits `gather_s`, so under load one read takes what many
sessions published meanwhile. A session with a full queue is left out of the reads until its
queue is taken (then the doorbell wakes the read); one whose entry failed is read again from
that entry a second later. The last persisted entry of each stream is saved in a Redis hash:
a restarted API resumes there, and an entry read twice is stored once (its source id is in
the session file).

Trimming: once persisted, entries are trimmed (`XTRIM MINID`); a stream idle for a while and
fully persisted is deleted, atomically with its set membership (`WATCH`), so a worker that
publishes at that moment either keeps it alive or recreates it.

`drain(session_id)` persists what a session's stream holds right now, synchronously: the
control plane calls it before answering a runner whose request depends on events it has
published (the next prompt, the conversation so far, releasing its lease).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import redis
from pydantic import ValidationError

from app.errors import Unavailable
from app.metrics import BUS_EVENTS, BUS_LAG
from workers.bus import (
    ACTIVE_KEY,
    CURSORS_KEY,
    DOORBELL_KEY,
    DOORBELL_MAXLEN,
    entry_order,
    stream_key,
)
from workers.events import Event, parse_event

log = logging.getLogger("nightshift.streams")

_PREFIX = stream_key("")

Publish = Callable[[str, Event, str], object]


class StreamConsumer:
    def __init__(
        self,
        url: str,
        publish: Publish,
        *,
        block_ms: int = 1000,
        batch: int = 500,
        refresh_s: float = 1.0,
        forget_after_s: float = 60.0,
        trim_every: int = 200,
        threads: int = 32,
        gather_s: float = 0.01,
        save_every_s: float = 0.2,
        owns: Callable[[str], bool] | None = None,
        staging: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self.url = url
        self.publish = publish
        self.staging = staging
        """Wraps a session's batch of publishes (`StagedPublishes.batch`: one index write)."""
        self.owns = owns or (lambda _session_id: True)
        """Several API processes: only the streams of the sessions this one owns are read."""
        self.block_ms = block_ms
        self.batch = batch
        self.refresh_s = refresh_s
        self.forget_after_s = forget_after_s
        self.trim_every = trim_every
        self.gather_s = gather_s
        self.save_every_s = save_every_s
        # decode_responses=True: every reply is str; redis-py's stubs cannot say so.
        self.redis: Any = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=block_ms / 1000 + 10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self.cursors: dict[str, str] = {}  # session id -> the last entry persisted
        self._read: dict[str, str] = {}  # session id -> the last entry read (maybe queued)
        self._queued: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._busy: set[str] = set()  # sessions whose queue a pool thread is persisting
        self._epoch: defaultdict[str, int] = defaultdict(int)
        """Bumped when a failed entry restarts a session's reading: a read then under way is
        dropped."""
        self._held: set[str] = set()  # left out of the reads while their queue is full
        self._retry_at: dict[str, float] = {}
        self._dirty: dict[str, str] = {}  # cursors persisted since the last save
        self._seen: dict[str, float] = {}
        self._untrimmed: defaultdict[str, int] = defaultdict(int)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._doorbell = "0-0"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.persisted = 0
        self.healthy = False
        # Sessions persist in parallel (each in order): an event holds its thread until the
        # control DB's group commit of its index values lands; other sessions go on meanwhile.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nightshift-persist")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="nightshift-streams", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.block_ms / 1000 + 5)
            self._thread = None
        self._pool.shutdown(wait=True)  # what was read is persisted first
        try:
            self._save()  # the last cursors, so a restart resumes after them
        except redis.RedisError as exc:
            log.warning("event streams: could not save the last cursors (%s)", exc)
        self.redis.close()

    def _run(self) -> None:
        delay, started = 0.1, False
        while not self._stop.is_set():
            try:
                if not started:
                    self._begin()
                    started = self.healthy = True
                self._step()
                self.healthy = True
                delay = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.healthy = False
                log.warning("event streams: Redis unavailable (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                self.healthy = False
                log.exception("event streams: consumer step failed")
                self._stop.wait(1.0)

    # ------------------------------------------------------------ the loop

    def _begin(self) -> None:
        """Resume: the doorbell from its end, and a first read of every active stream from its
        saved cursor (a sweep: `_last_refresh` is long past)."""
        last = self.redis.xrevrange(DOORBELL_KEY, count=1)
        self._doorbell = last[0][0] if last else "0-0"
        self._last_save = self._last_maintain = time.monotonic()
        self._last_refresh = float("-inf")

    def _lock(self, session_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(session_id, threading.Lock())

    def _track(self, session_ids: list[str]) -> None:
        new = [s for s in session_ids if s not in self.cursors]
        if not new:
            return
        saved = self.redis.hmget(CURSORS_KEY, new)
        now = time.monotonic()
        with self._guard:
            for session_id, cursor in zip(new, saved, strict=True):
                self.cursors.setdefault(session_id, cursor or "0-0")
                self._seen[session_id] = now

    def _refresh(self) -> None:
        self._track(sorted(self.redis.smembers(ACTIVE_KEY)))

    def _positions(self, rung: set[str] | None) -> dict[str, tuple[str, int]]:
        """Where to read on from (and the epoch) for `rung` and the sessions whose failed entry
        is due again, or with None for every session."""
        now = time.monotonic()
        with self._guard:
            due = {s for s, t in self._retry_at.items() if t <= now}
            self._retry_at = {s: t for s, t in self._retry_at.items() if s not in due}
            named = self.cursors.keys() if rung is None else (rung | due) & self.cursors.keys()
            skip = self._held | self._retry_at.keys()
            return {
                s: (max(self._read.get(s, "0-0"), self.cursors[s], key=entry_order), self._epoch[s])
                for s in named
                if s not in skip and self.owns(s)
            }

    def _rung(self, block_ms: int | None) -> set[str]:
        """The sessions the doorbell named since the last read (waiting up to `block_ms`)."""
        reply = self.redis.xread({DOORBELL_KEY: self._doorbell}, DOORBELL_MAXLEN, block=block_ms)
        rung: set[str] = set()
        for _, entries in reply or ():
            self._doorbell = entries[-1][0]
            rung.update(fields["sid"] for _, fields in entries)
        self._track(sorted(rung))
        return rung

    def _step(self) -> None:
        now = time.monotonic()
        sweep = now - self._last_refresh >= self.refresh_s
        if sweep:
            self._refresh()
            self._last_refresh = now
        rung = self._rung(None if sweep else self.block_ms)  # a sweep does not wait
        positions = self._positions(None if sweep else rung)
        found = False
        if positions:
            streams = {stream_key(s): at for s, (at, _) in positions.items()}
            for key, entries in self.redis.xread(streams, count=self.batch) or ():
                session_id = key[len(_PREFIX) :]
                found = self._queue(session_id, positions[session_id][1], entries) or found
        now = time.monotonic()
        if self._dirty and now - self._last_save >= self.save_every_s:
            self._save()
            self._last_save = now
        if now - self._last_maintain >= 5.0:
            self._maintain()
            self._last_maintain = time.monotonic()
        if found:  # let what other sessions publish meanwhile gather for the next read
            self._stop.wait(self.gather_s)

    def _queue(
        self, session_id: str, epoch: int, entries: list[tuple[str, dict[str, str]]]
    ) -> bool:
        """Hand entries read to the session's queue; start a pool thread on it if none is."""
        with self._guard:
            if self._epoch[session_id] != epoch:
                return False  # read before a failed entry reset the session: read again
            queue = self._queued.setdefault(session_id, [])
            queue.extend(entries)
            self._read[session_id] = entries[-1][0]
            if len(queue) >= self.batch:
                self._held.add(session_id)
            if session_id in self._busy:
                return True
            self._busy.add(session_id)
        self._pool.submit(self._work, session_id)
        return True

    def _work(self, session_id: str) -> None:
        """Persist the session's queue until it is empty (the only thread doing so)."""
        while True:
            with self._guard:
                entries = self._queued.pop(session_id, [])
                if not entries:
                    self._busy.discard(session_id)
                    return
                held = session_id in self._held
                self._held.discard(session_id)
            if held:  # its queue is taken: wake the read, which left the session out
                with contextlib.suppress(redis.RedisError):
                    self.redis.xadd(DOORBELL_KEY, {"sid": session_id}, maxlen=DOORBELL_MAXLEN)
            try:
                with self._lock(session_id):
                    failed = self._persist(session_id, entries)
            except Exception:
                log.exception("persisting a batch of %s failed; it is read again", session_id)
                failed = True
            if failed:
                with self._guard:  # read again from the failed entry, a second from now
                    self._queued.pop(session_id, None)
                    self._held.discard(session_id)  # what the read queued meanwhile is dropped
                    self._read.pop(session_id, None)
                    self._epoch[session_id] += 1
                    self._retry_at[session_id] = time.monotonic() + 1.0

    def _persist(self, session_id: str, entries: list[tuple[str, dict[str, str]]]) -> bool:
        """Store entries after the session's cursor (caller holds its lock); True when one
        failed (the cursor stays before it, so it is read again)."""
        cursor = self.cursors.get(session_id, "0-0")
        with self.staging():
            cursor, stored, failed = self._publish_all(session_id, entries, cursor)
        if stored:
            with self._guard:
                self.cursors[session_id] = cursor
                self._dirty[session_id] = cursor
                self._seen[session_id] = time.monotonic()
                self._untrimmed[session_id] += stored
        return failed

    def _publish_all(
        self, session_id: str, entries: list[tuple[str, dict[str, str]]], cursor: str
    ) -> tuple[str, int, bool]:
        """Publish the entries after `cursor`: the new cursor, how many passed, if one failed."""
        failed, stored = False, 0
        for entry_id, fields in entries:
            if not entry_order(entry_id) > entry_order(cursor):
                continue
            try:
                event = parse_event(fields["data"])
            except (KeyError, ValidationError) as exc:
                log.error("dropping malformed entry %s of %s: %s", entry_id, session_id, exc)
            else:
                try:
                    self.publish(session_id, event, fields.get("src") or entry_id)
                except FileNotFoundError:
                    log.error("dropping entry %s: no session %s on this API", entry_id, session_id)
                except Exception:
                    log.exception("persisting entry %s of %s failed", entry_id, session_id)
                    failed = True
                    break
                else:
                    self.persisted += 1
                    BUS_EVENTS.inc()
                    BUS_LAG.observe(max(0.0, time.time() - event.ts))
            cursor = entry_id
            stored += 1
        return cursor, stored, failed

    def _save(self) -> None:
        """Save the cursors persisted since the last save; trim what they passed."""
        with self._guard:
            cursors, self._dirty = self._dirty, {}
            trims = [s for s in cursors if self._untrimmed[s] >= self.trim_every]
            for session_id in trims:
                self._untrimmed[session_id] = 0
        if not cursors:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(CURSORS_KEY, mapping=cursors)
        for session_id in trims:
            pipe.xtrim(stream_key(session_id), minid=cursors[session_id], approximate=False)
        pipe.execute()  # should it fail, a restart rereads a little more (stored once)

    def _maintain(self) -> None:
        """Forget streams that are fully persisted and quiet; delete them from Redis."""
        cutoff = time.monotonic() - self.forget_after_s
        with self._guard:
            busy = self._busy | self._queued.keys() | self._dirty.keys()
            quiet = [s for s, t in self._seen.items() if t < cutoff and s not in busy]
        quiet = [s for s in quiet if self.owns(s)]
        for session_id in quiet:
            with self._lock(session_id):
                if self._forget(session_id):
                    tables: tuple[dict[str, Any], ...] = (self.cursors, self._read, self._seen)
                    with self._guard:
                        for table in (*tables, self._retry_at, self._untrimmed, self._epoch):
                            table.pop(session_id, None)
                        self._locks.pop(session_id, None)

    def _forget(self, session_id: str) -> bool:
        key = stream_key(session_id)
        cursor = self.cursors.get(session_id, "0-0")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                last = pipe.xrevrange(key, count=1)
                if last and entry_order(last[0][0]) > entry_order(cursor):
                    pipe.unwatch()
                    return False  # unread entries: the next read takes them
                pipe.multi()
                pipe.delete(key)
                pipe.srem(ACTIVE_KEY, session_id)
                pipe.hdel(CURSORS_KEY, session_id)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    # ------------------------------------------------------------ on demand

    def drain(self, session_id: str) -> int:
        """Persist everything the session's stream holds now; how many entries were read."""
        with self._lock(session_id):
            self._track([session_id])
            cursor = self.cursors[session_id]
            read = 0
            while True:
                entries = self.redis.xrange(stream_key(session_id), f"({cursor}", count=self.batch)
                read += len(entries)
                if not entries or self._persist(session_id, entries):
                    break  # all read, or a failed entry stopped it (it is read again later)
                cursor = entries[-1][0]
            return read

    def drain_or_unavailable(self, session_id: str) -> int:
        """`drain`, with Redis down reported as `Unavailable` (a 503 to whoever is reading)."""
        try:
            return self.drain(session_id)
        except redis.RedisError as exc:
            raise Unavailable(f"the event bus (Redis) is unavailable: {exc}") from exc
