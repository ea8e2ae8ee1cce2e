"""The API side of the distributed event bus: read every session's Redis stream, persist each
event through the hub (session file first, then index and fan-out), remember how far we got.

Discovery: workers add a session to a Redis set when they publish to its stream and ring a
doorbell stream when they start; one blocking `XREAD` waits on the doorbell and on every
active stream at once, so an event is persisted as soon as it lands. Sessions are persisted in
parallel; one whose batch is still being written is left out of the read until it is done
(its events stay in order), and finishing a batch rings the doorbell so the read wakes for
that session at once. The id of the last
persisted entry of each stream is kept in a Redis hash: a restarted API resumes there, and an
entry read twice is stored once because its source id is already in the session file.

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
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import redis
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from app.errors import Unavailable
from workers.bus import ACTIVE_KEY, CURSORS_KEY, DOORBELL_KEY, DOORBELL_MAXLEN, stream_key
from workers.events import Event, parse_event

log = logging.getLogger("nightshift.streams")

BUS_EVENTS = Counter("nightshift_bus_events_total", "Events persisted from Redis streams")
BUS_LAG = Histogram(
    "nightshift_bus_lag_seconds",
    "Event created on a worker to persisted and fanned out by the API",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_PREFIX = stream_key("")

Publish = Callable[[str, Event, str], object]


def _after(entry_id: str, cursor: str) -> bool:
    a, _, b = entry_id.partition("-")
    c, _, d = cursor.partition("-")
    return (int(a), int(b or 0)) > (int(c), int(d or 0))


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
        threads: int = 8,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.url = url
        self.publish = publish
        self.owns = owns or (lambda _session_id: True)
        """Several API processes: only the streams of the sessions this one owns are read."""
        self.block_ms = block_ms
        self.batch = batch
        self.refresh_s = refresh_s
        self.forget_after_s = forget_after_s
        self.trim_every = trim_every
        # decode_responses=True: every reply is str; redis-py's stubs cannot say so.
        self.redis: Any = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=block_ms / 1000 + 10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self.cursors: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self._untrimmed: defaultdict[str, int] = defaultdict(int)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._doorbell = "0-0"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.persisted = 0
        self.healthy = False
        # Sessions are persisted in parallel (each in order): a session file write and its
        # index update mostly wait on disk, and concurrent commits share a flush.
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="nightshift-persist")
        self._inflight: dict[str, Future[str | None]] = {}

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
        self._pool.shutdown(wait=True)
        try:
            self._collect()  # the cursors of the last batches, so a restart resumes after them
        except redis.RedisError as exc:
            log.warning("event streams: could not save the last cursors (%s)", exc)
        self.redis.close()

    def _run(self) -> None:
        delay = 0.1
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    self._begin()
                    started = True
                    self.healthy = True
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
        """Resume: every active session from its saved cursor; the doorbell from its end."""
        last = self.redis.xrevrange(DOORBELL_KEY, count=1)
        self._doorbell = last[0][0] if last else "0-0"
        self._refresh()
        self._last_refresh = time.monotonic()
        self._last_maintain = time.monotonic()

    def _lock(self, session_id: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(session_id)
            if lock is None:
                lock = self._locks[session_id] = threading.Lock()
            return lock

    def _track(self, session_ids: list[str]) -> None:
        new = [s for s in session_ids if s not in self.cursors]
        if not new:
            return
        saved = self.redis.hmget(CURSORS_KEY, new)
        now = time.monotonic()
        for session_id, cursor in zip(new, saved, strict=True):
            self.cursors.setdefault(session_id, cursor or "0-0")
            self._seen[session_id] = now

    def _refresh(self) -> None:
        self._track(sorted(self.redis.smembers(ACTIVE_KEY)))

    def _step(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= self.refresh_s:
            self._refresh()
            self._last_refresh = now
        self._collect()
        # A session whose last batch is still being persisted is not read again until it is
        # done (its events stay in order); the others are read meanwhile, so one slow write
        # never holds up every other session's events.
        streams: dict[str, str] = {DOORBELL_KEY: self._doorbell}
        streams.update(
            {
                stream_key(s): c
                for s, c in self.cursors.items()
                if s not in self._inflight and self.owns(s)
            }
        )
        reply = self.redis.xread(streams, count=self.batch, block=self.block_ms)
        for key, entries in reply or ():
            if key == DOORBELL_KEY:
                self._doorbell = entries[-1][0]
                self._track(list(dict.fromkeys(fields["sid"] for _, fields in entries)))
                continue
            session_id = key[len(_PREFIX) :]
            job = self._pool.submit(self._persist_locked, session_id, entries)
            job.add_done_callback(partial(self._ring, session_id))
            self._inflight[session_id] = job
        self._collect()
        if time.monotonic() - self._last_maintain >= 5.0:
            self._maintain()
            self._last_maintain = time.monotonic()

    def _ring(self, session_id: str, _job: Future[str | None]) -> None:
        """A batch is persisted: ring the doorbell so the blocking read wakes and reads the
        session again at once (failing that, it is read after `block_ms`)."""
        with contextlib.suppress(redis.RedisError):
            self.redis.xadd(
                DOORBELL_KEY, {"sid": session_id}, maxlen=DOORBELL_MAXLEN, approximate=True
            )

    def _collect(self) -> None:
        """Save the cursors of the batches persisted since the last call."""
        touched: dict[str, str] = {}
        for session_id, job in list(self._inflight.items()):
            if not job.done():
                continue
            del self._inflight[session_id]
            try:
                cursor = job.result()
            except Exception:
                log.exception("persisting a batch of %s failed; it is read again", session_id)
                continue
            if cursor is not None:
                touched[session_id] = cursor
        if touched:
            self._save(touched)

    def _persist_locked(
        self, session_id: str, entries: list[tuple[str, dict[str, str]]]
    ) -> str | None:
        with self._lock(session_id):
            return self._persist(session_id, entries)

    def _persist(self, session_id: str, entries: list[tuple[str, dict[str, str]]]) -> str | None:
        """Store entries after the session's cursor (caller holds its lock); the new cursor."""
        cursor = self.cursors.get(session_id, "0-0")
        moved = False
        for entry_id, fields in entries:
            if not _after(entry_id, cursor):
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
                    break  # keep the cursor here: the entry is read again next time
                else:
                    self.persisted += 1
                    BUS_EVENTS.inc()
                    BUS_LAG.observe(max(0.0, time.time() - event.ts))
            cursor = entry_id
            moved = True
        if not moved:
            return None
        self.cursors[session_id] = cursor
        self._seen[session_id] = time.monotonic()
        self._untrimmed[session_id] += len(entries)
        return cursor

    def _save(self, cursors: dict[str, str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(CURSORS_KEY, mapping=cursors)
        for session_id, cursor in cursors.items():
            if self._untrimmed[session_id] >= self.trim_every:
                pipe.xtrim(stream_key(session_id), minid=cursor, approximate=False)
                self._untrimmed[session_id] = 0
        pipe.execute()

    def _maintain(self) -> None:
        """Forget streams that are fully persisted and quiet; delete them from Redis."""
        cutoff = time.monotonic() - self.forget_after_s
        quiet = [
            s
            for s, t in self._seen.items()
            if t < cutoff and s not in self._inflight and self.owns(s)
        ]
        for session_id in quiet:
            with self._lock(session_id):
                if self._forget(session_id):
                    self.cursors.pop(session_id, None)
                    self._seen.pop(session_id, None)
                    self._untrimmed.pop(session_id, None)
                    with self._guard:
                        self._locks.pop(session_id, None)

    def _forget(self, session_id: str) -> bool:
        key = stream_key(session_id)
        cursor = self.cursors.get(session_id, "0-0")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                last = pipe.xrevrange(key, count=1)
                if last and _after(last[0][0], cursor):
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
            cursor = self.cursors.get(session_id)
            if cursor is None:
                cursor = str(self.redis.hget(CURSORS_KEY, session_id) or "0-0")
                self.cursors[session_id] = cursor
                self._seen[session_id] = time.monotonic()
            read = 0
            while True:
                entries = self.redis.xrange(stream_key(session_id), min=f"({cursor}", count=500)
                if not entries:
                    break
                read += len(entries)
                moved = self._persist(session_id, entries)
                if moved is None or moved == cursor:
                    break
                cursor = moved
                if self.cursors.get(session_id) != entries[-1][0]:
                    break  # a failed entry stopped the batch; it is retried later
            if read:
                self.redis.hset(CURSORS_KEY, session_id, self.cursors[session_id])
            return read

    def drain_or_unavailable(self, session_id: str) -> int:
        """`drain`, with Redis down reported as `Unavailable` (a 503 to whoever is reading)."""
        try:
            return self.drain(session_id)
        except redis.RedisError as exc:
            raise Unavailable(f"the event bus (Redis) is unavailable: {exc}") from exc
