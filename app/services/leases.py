"""Lease renewals with group commit: renewals that arrive together are one statement.

Every runner renews its session's lease every few seconds (`AgentConfig.heartbeat_s`), and
runners of one process renew on the same tick (`workers/runner.py` `_heartbeat`). One
`UPDATE ... WHERE (id, lease_owner) IN (...) RETURNING` then renews all of them, instead of a
control DB transaction per runner queuing for the write lock.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from sqlalchemy import Engine, tuple_, update
from sqlmodel import col

from app.models import Session
from workers.control import LeaseState

Key = tuple[str, str]
"""(session id, runner id)"""


class LeaseRenewals:
    """`renew` returns once its lease is renewed (or found lost). A caller that finds a batch
    being written queues its renewal for the next one; the next caller to find the writer free
    writes everything queued, and wakes the others with their answers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._pending: dict[Key, float] = {}
        self._generation = 0
        self._writing = False
        self._answers: dict[int, dict[Key, LeaseState] | Exception] = {}
        self._waiting: defaultdict[int, int] = defaultdict(int)
        self.statements = 0
        """Renewal batches written so far."""

    def renew(self, session_id: str, runner: str, ttl: float) -> LeaseState:
        key = (session_id, runner)
        with self._cond:
            self._pending[key] = ttl
            mine = self._generation
            self._waiting[mine] += 1
            while mine not in self._answers:
                if not self._writing:
                    break
                self._cond.wait()
            else:
                return self._answer(mine, key)
            self._writing = True
            batch, self._pending = self._pending, {}
            self._generation += 1
        answers: dict[Key, LeaseState] | Exception
        try:
            answers = self._write(batch)
        except Exception as exc:  # every renewal of the batch failed: each caller hears it
            answers = exc
        with self._cond:
            self._answers[mine] = answers
            self._writing = False
            self._cond.notify_all()
            return self._answer(mine, key)

    def _answer(self, generation: int, key: Key) -> LeaseState:
        answers = self._answers[generation]
        self._waiting[generation] -= 1
        if not self._waiting[generation]:
            del self._waiting[generation], self._answers[generation]
        if isinstance(answers, Exception):
            raise answers
        return answers.get(key, "lost")

    def renew_many(self, batch: dict[Key, float]) -> dict[Key, LeaseState]:
        """Renew every lease of `batch` (key -> ttl) in one transaction, at once: for callers
        that gathered the renewals themselves (the in-process control plane, per tick)."""
        return self._write(batch)

    def _write(self, batch: dict[Key, float]) -> dict[Key, LeaseState]:
        by_ttl: defaultdict[float, list[Key]] = defaultdict(list)
        for key, ttl in batch.items():
            by_ttl[ttl].append(key)
        answers: dict[Key, LeaseState] = {}
        with self.engine.begin() as conn:
            now = time.time()
            for ttl, keys in by_ttl.items():
                rows = conn.execute(
                    update(Session)
                    .where(tuple_(col(Session.id), col(Session.lease_owner)).in_(keys))
                    .values(lease_expires_at=now + ttl)
                    .returning(
                        col(Session.id), col(Session.lease_owner), col(Session.stop_requested)
                    )
                )
                for session_id, runner, stop in rows:
                    answers[(session_id, str(runner))] = "stop" if stop else "held"
        self.statements += 1
        return answers
