"""The warm pool: sandboxes started ahead of time, each claimed by exactly one session.

Two kinds of entries, both started from the newest image with the base branch already
fetched into the workspace:

- **shared** entries keep each repo's `pool_size` sandboxes ready for whoever prompts next;
  they expire after `pool_ttl` and are replaced when a new image lands.
- **reserved** entries come from predictive warm-up (`request_warm`, called while a person
  types): one per (repo, caller), kept for `warm_ttl` after the last request; that caller's
  next session claims it. When a repo has no image yet, a reserved entry starts cold (clone
  plus set-up) so the typing time still pays for it.

A session claims its caller's reserved entry first, then any shared one; a claim of an entry
still warming waits for it (it started earlier than a fresh start would). Claims, warm-up
requests and maintenance may come from different threads: the entry table is guarded by a
lock, and all sandbox work runs on the loop `spawn` schedules onto.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from images.spec import RepoSpec
from images.starter import Acquired, ImageStarter

log = logging.getLogger("nightshift.pool")

WarmState = Literal["cold", "warming", "warm", "failed"]
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


@dataclass
class WarmInfo:
    """What a caller's warm-up looks like: `cold` (nothing), `warming`, `warm` or `failed`."""

    repo: str
    state: WarmState
    sandbox_id: str | None = None
    expires_at: float | None = None
    error: str | None = None


@dataclass(eq=False)
class PoolEntry:
    repo: str
    spec: RepoSpec
    claimant: str | None
    """The caller this sandbox is reserved for; None for the repo's shared pool."""
    expires_at: float
    id: str = field(default_factory=lambda: f"warm-{secrets.token_hex(4)}")
    state: WarmState = "warming"
    acquired: Acquired | None = None
    error: str | None = None
    requested_at: float = field(default_factory=time.time)
    failed_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    claimed: bool = False
    """A session took it and waits on `done` for the sandbox."""
    dropped: bool = False
    """Expired, replaced or abandoned: whoever holds its sandbox terminates it."""

    @property
    def image_id(self) -> str | None:
        return self.acquired.image.id if self.acquired is not None else None

    def info(self) -> WarmInfo:
        sandbox = self.acquired.sandbox.id if self.acquired is not None else None
        return WarmInfo(self.repo, self.state, sandbox, self.expires_at, self.error)


class WarmPool:
    def __init__(
        self,
        starter: ImageStarter,
        spawn: Spawn,
        *,
        pool_ttl: float = 900.0,
        warm_ttl: float = 300.0,
        debounce: float = 2.0,
        claim_wait: float = 120.0,
    ) -> None:
        self.starter = starter
        self.spawn = spawn
        self.pool_ttl = pool_ttl
        self.warm_ttl = warm_ttl
        self.debounce = debounce
        self.claim_wait = claim_wait
        self._lock = threading.Lock()
        self._reserved: dict[tuple[str, str], PoolEntry] = {}
        self._shared: dict[str, list[PoolEntry]] = {}
        self._newest: dict[str, str | None] = {}
        """Per repo, the newest image id: pooled sandboxes of other images are replaced."""

    # ------------------------------------------------------------ predictive warm-up

    def request_warm(self, spec: RepoSpec, claimant: str) -> WarmInfo:
        """Make sure a sandbox is warm for `claimant` on `spec` for `warm_ttl` seconds.

        Returns at once; idempotent (one sandbox per caller and repo, each call extends its
        life) and debounced (after a failure, no new attempt for `debounce` seconds).
        """
        now = time.time()
        key = (spec.name, claimant)
        fill: PoolEntry | None = None
        with self._lock:
            entry = self._reserved.get(key)
            if entry is not None and entry.state != "failed":
                # Still in the table (upkeep has not dropped it), so its sandbox is alive.
                entry.expires_at = max(entry.expires_at, now + self.warm_ttl)
                entry.requested_at = now
                return entry.info()
            if entry is not None and now - (entry.failed_at or 0) < self.debounce:
                return entry.info()
            if entry is not None:
                self._drop_locked(entry)
            entry = self._best_shared_locked(spec.name)
            if entry is not None:
                self._shared[spec.name].remove(entry)
                entry.claimant, entry.expires_at = claimant, now + self.warm_ttl
                entry.requested_at = now
            else:
                entry = fill = PoolEntry(spec.name, spec, claimant, now + self.warm_ttl)
            self._reserved[key] = entry
            info = entry.info()
        if fill is not None:
            self._fill(fill, cold_ok=True)
        else:
            self.spawn(lambda: self.maintain([spec], only=spec.name))  # top the shared pool up
        return info

    def status(self, repo: str, claimant: str) -> WarmInfo:
        """The caller's warm-up state for `repo` (`cold` when nothing is warm for them)."""
        with self._lock:
            entry = self._reserved.get((repo, claimant))
            if entry is None or (entry.expires_at <= time.time() and entry.state != "failed"):
                return WarmInfo(repo, "cold")
            return entry.info()

    # ------------------------------------------------------------ claiming

    async def claim(self, repo: str, claimant: str | None) -> Acquired | None:
        """Take the caller's reserved sandbox, else a shared one; None when there is none."""
        now = time.time()
        with self._lock:
            entry = None
            if claimant is not None:
                mine = self._reserved.get((repo, claimant))
                if mine is not None and mine.state != "failed" and mine.expires_at > now:
                    entry = self._reserved.pop((repo, claimant))
            if entry is None:
                entry = self._best_shared_locked(repo)
                if entry is not None:
                    self._shared[repo].remove(entry)
            if entry is None:
                return None
            entry.claimed = True
            shared = entry.claimant is None
        if shared:
            spec = entry.spec
            self.spawn(lambda: self.maintain([spec], only=repo))  # replace what was taken
        if entry.state == "warming":
            try:
                await asyncio.wait_for(entry.done.wait(), self.claim_wait)
            except TimeoutError:
                with self._lock:
                    entry.dropped = True
                await self._discard(entry)
                return None
        with self._lock:
            acquired, entry.acquired = entry.acquired, None
        if entry.state != "warm" or acquired is None:
            return None
        return acquired

    # ------------------------------------------------------------ keeping it filled

    async def maintain(self, specs: list[RepoSpec], only: str | None = None) -> None:
        """Expire, replace (a new image landed) and top up pooled sandboxes for `specs`.

        With `only`, just that repo; otherwise repos missing from `specs` lose their pool.
        """
        for spec in specs:
            if only is None or spec.name == only:
                newest = await asyncio.to_thread(self.starter.newest_image_id, spec)
                with self._lock:
                    self._newest[spec.name] = newest
        now = time.time()
        by_name = {s.name: s for s in specs}
        doomed: list[PoolEntry] = []
        fills: list[PoolEntry] = []
        with self._lock:
            for key, entry in list(self._reserved.items()):
                if only is not None and key[0] != only:
                    continue
                gone = only is None and key[0] not in by_name
                if entry.expires_at <= now or gone:
                    del self._reserved[key]
                    doomed.append(entry)
                elif self._stale_locked(entry):
                    # A new image landed: warm a replacement for the same caller.
                    doomed.append(entry)
                    fresh = PoolEntry(
                        entry.repo, by_name.get(entry.repo, entry.spec), entry.claimant,
                        entry.expires_at,
                    )  # fmt: skip
                    self._reserved[key] = fresh
                    fills.append(fresh)
            for repo in list(self._shared):
                if only is not None and repo != only:
                    continue
                wanted = by_name.get(repo)
                keep = []
                for entry in self._shared[repo]:
                    expired = entry.expires_at <= now or entry.state == "failed"
                    if wanted is None or expired or self._stale_locked(entry):
                        doomed.append(entry)
                    else:
                        keep.append(entry)
                target = wanted.pool_size if wanted is not None else 0
                doomed += keep[target:]
                self._shared[repo] = keep[:target]
            for spec in specs:
                if only is not None and spec.name != only:
                    continue
                if spec.pool_size > 0 and self._newest.get(spec.name) is None:
                    continue  # shared sandboxes start from images only; none yet
                entries = self._shared.setdefault(spec.name, [])
                while len(entries) < spec.pool_size:
                    entry = PoolEntry(spec.name, spec, None, now + self.pool_ttl)
                    entries.append(entry)
                    fills.append(entry)
            for entry in doomed:
                entry.dropped = True
        for entry in doomed:
            await self._discard(entry)
        for entry in fills:
            self._fill(entry, cold_ok=entry.claimant is not None)

    def image_landed(self, spec: RepoSpec) -> None:
        """A new image of `spec` is ready: pooled sandboxes of older images get replaced."""
        self.spawn(lambda: self.maintain([spec], only=spec.name))

    def entries(self, repo: str | None = None) -> list[PoolEntry]:
        """A snapshot of the pool (reserved and shared), for status pages and tests."""
        with self._lock:
            return [e for e in self._entries_locked() if repo is None or e.repo == repo]

    def image_ids(self) -> set[str]:
        """Images pooled sandboxes run on (never collected while they do)."""
        return {e.image_id for e in self.entries() if e.image_id is not None}

    async def close(self) -> None:
        """Terminate every pooled sandbox."""
        with self._lock:
            entries = self._entries_locked()
            self._reserved.clear()
            self._shared.clear()
            for entry in entries:
                entry.dropped = True
        for entry in entries:
            await self._discard(entry)

    # ------------------------------------------------------------ internals

    def _entries_locked(self) -> list[PoolEntry]:
        return [*self._reserved.values(), *(e for es in self._shared.values() for e in es)]

    def _best_shared_locked(self, repo: str) -> PoolEntry | None:
        now = time.time()
        live = [e for e in self._shared.get(repo, []) if e.state != "failed" and e.expires_at > now]
        warm = [e for e in live if e.state == "warm"]
        return (warm or live)[0] if live else None

    def _stale_locked(self, entry: PoolEntry) -> bool:
        newest = self._newest.get(entry.repo)
        return entry.state == "warm" and newest is not None and entry.image_id != newest

    def _drop_locked(self, entry: PoolEntry) -> None:
        entry.dropped = True
        self.spawn(lambda: self._discard(entry))

    async def _discard(self, entry: PoolEntry) -> None:
        with self._lock:
            acquired, entry.acquired = entry.acquired, None
        if acquired is not None:
            try:
                await acquired.sandbox.terminate()
            except Exception:
                log.warning("terminating pooled sandbox %s failed", acquired.sandbox.id)

    def _fill(self, entry: PoolEntry, *, cold_ok: bool) -> None:
        async def fill() -> None:
            try:
                acquired = await self.starter.prepare_warm(entry.spec, cold_ok)
            except asyncio.CancelledError:
                entry.state, entry.error, entry.failed_at = "failed", "cancelled", time.time()
                entry.done.set()
                raise
            except Exception as exc:
                log.warning("warming a sandbox for %s failed: %s", entry.repo, exc)
                entry.state, entry.error, entry.failed_at = "failed", str(exc), time.time()
                entry.done.set()
                return
            with self._lock:
                entry.acquired, entry.state = acquired, "warm"
                orphan = entry.dropped
            entry.done.set()
            if orphan:
                await self._discard(entry)

        self.spawn(fill)
