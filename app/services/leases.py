"""Lease renewals with group commit: renewals that arrive together are one statement.

Every runner renews its session's lease every few seconds (`AgentConfig.heartbeat_s`), and
runners of one process renew on the same tick (`workers/runner.py` `_heartbeat`). One
`UPDATE ... WHERE (id, lease_owner) IN (...) RETURNING` then renews all of them, instead of a
control DB transaction per runner queuing for the write lock.
"""

from __future__ import annotations

import time
from collections import defaultdict

from sqlalchemy import Engine, tuple_, update
from sqlmodel import col

from app.group_commit import GroupCommit
from app.models import Session
from workers.control import LeaseState

Key = tuple[str, str]
"""(session id, runner id)"""


class LeaseRenewals:
    """`renew` returns once its lease is renewed (or found lost). Renewals that arrive while a
    batch is being written are written together by the next caller (`app/group_commit.py`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commits: GroupCommit[dict[Key, float], dict[Key, LeaseState]] = GroupCommit(
            dict, self._write
        )

    @property
    def statements(self) -> int:
        """Renewal batches written so far."""
        return self._commits.batches

    def queued(self) -> int:
        """Renewals waiting for the next batch."""
        return len(self._commits.pending())

    def renew(self, session_id: str, runner: str, ttl: float) -> LeaseState:
        key = (session_id, runner)
        answers = self._commits.commit(lambda pending: pending.__setitem__(key, ttl))
        return answers.get(key, "lost")

    def renew_many(self, batch: dict[Key, float]) -> dict[Key, LeaseState]:
        """Renew every lease of `batch` (key -> ttl) in one transaction: for callers that
        gathered the renewals themselves (the in-process control plane, per tick). A lease
        the answer leaves out is lost; it may also hold other callers' renewals."""
        return self._commits.commit(lambda pending: pending.update(batch))

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
        return answers
