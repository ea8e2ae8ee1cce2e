"""Which API process owns which session, when several serve one control DB.

Only a session's owner writes its file and runs its runners; every other process forwards
the session's requests to the owner's `peer_url` (`app/api/forward.py`). Ownership is a lease
in the control DB (`SessionOwner`): the creating process takes it in the transaction that
inserts the session, and a heartbeat renews all of a process's leases in one statement. A
lease that expired, or whose process is certainly gone (same host, pid not running), is
claimed by the next process that needs the session: on a request, or in the reaper's sweep,
which then recovers the session the way a restarted process does.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.liveness import owner_alive
from app.models import Session, SessionOwner

log = logging.getLogger("nightshift.ownership")
STALL_TTLS = 3


@dataclass(frozen=True)
class Owner:
    process_id: str
    peer_url: str
    mine: bool


class Ownership:
    """This process's side of the session-ownership leases."""

    def __init__(self, engine: Engine, peer_url: str, ttl: float) -> None:
        self.engine = engine
        self.peer_url = peer_url.rstrip("/")
        self.ttl = ttl
        self.process_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._mine: set[str] = set()
        self._guard = threading.Lock()

    def holds(self, session_id: str) -> bool:
        """Whether this process owned the session at its last heartbeat or claim (no query)."""
        with self._guard:
            return session_id in self._mine

    def held(self) -> set[str]:
        with self._guard:
            return set(self._mine)

    def new_row(self, session_id: str) -> SessionOwner:
        """The lease of a session this process is creating, to insert with its `Session` row."""
        with self._guard:
            self._mine.add(session_id)
        return SessionOwner(
            session_id=session_id,
            process_id=self.process_id,
            peer_url=self.peer_url,
            expires_at=time.time() + self.ttl,
        )

    def owner(self, session_id: str) -> Owner | None:
        """The session's owner, claiming the session when nobody live holds it; None when no
        such session exists."""
        if self.holds(session_id):
            return Owner(self.process_id, self.peer_url, True)
        with DB(self.engine) as db:
            if db.get(Session, session_id) is None:
                return None
            row = db.get(SessionOwner, session_id)
        if row is not None and not self._claimable(row, time.time()):
            return Owner(row.process_id, row.peer_url, row.process_id == self.process_id)
        return self._claim(session_id, row) or self.owner_row(session_id)

    def owner_row(self, session_id: str) -> Owner | None:
        with DB(self.engine) as db:
            row = db.get(SessionOwner, session_id)
        if row is None:
            return None
        return Owner(row.process_id, row.peer_url, row.process_id == self.process_id)

    def claim_all(self, session_ids: Iterable[str]) -> set[str]:
        """Of `session_ids` (existing sessions), those this process owns now: its own, and
        those free or left by a dead process, which it claims (the reaper's sweep)."""
        ids = list(session_ids)
        if not ids:
            return set()
        with DB(self.engine) as db:
            rows = {
                r.session_id: r
                for r in db.exec(
                    select(SessionOwner).where(col(SessionOwner.session_id).in_(ids))
                ).all()
            }
        now = time.time()
        owned = set()
        for session_id in ids:
            row = rows.get(session_id)
            ours = row is not None and row.process_id == self.process_id
            free = row is None or self._claimable(row, now)
            if ours or (free and self._claim(session_id, row)):
                owned.add(session_id)
        with self._guard:
            self._mine |= owned
        return owned

    def _claimable(self, row: SessionOwner, now: float) -> bool:
        """Its process is certainly gone, or its lease expired. A process on this host that
        still runs is only late with its heartbeat (a busy machine): its lease is left to it
        for STALL_TTLS times the TTL before it counts as hung."""
        if row.process_id == self.process_id:
            return False
        if not owner_alive(row.process_id):
            return True
        here = row.process_id.rpartition("-")[0].rpartition("-")[0] == socket.gethostname()
        grace = (STALL_TTLS - 1) * self.ttl if here else 0.0
        return row.expires_at + grace < now

    def _claim(self, session_id: str, seen: SessionOwner | None) -> Owner | None:
        """Take the lease `seen` (None: there was none), unless another process took it first."""
        expires = time.time() + self.ttl
        with DB(self.engine) as db:
            if seen is None:
                db.add(
                    SessionOwner(
                        session_id=session_id,
                        process_id=self.process_id,
                        peer_url=self.peer_url,
                        expires_at=expires,
                    )
                )
                try:
                    db.commit()
                except IntegrityError:
                    return None
            else:
                result = db.exec(
                    update(SessionOwner)
                    .where(
                        col(SessionOwner.session_id) == session_id,
                        col(SessionOwner.process_id) == seen.process_id,
                        col(SessionOwner.expires_at) == seen.expires_at,
                    )
                    .values(process_id=self.process_id, peer_url=self.peer_url, expires_at=expires)
                )
                db.commit()
                if result.rowcount != 1:
                    return None
        log.info(
            "claimed session %s%s",
            session_id,
            f" from {seen.process_id}" if seen is not None else "",
        )
        with self._guard:
            self._mine.add(session_id)
        return Owner(self.process_id, self.peer_url, True)

    def renew(self) -> int:
        """The heartbeat: extend every lease of this process; forget those another process
        took (a stall past the TTL), so their runners stop. Returns how many are held."""
        with self.engine.begin() as conn:
            conn.execute(
                update(SessionOwner)
                .where(col(SessionOwner.process_id) == self.process_id)
                .values(expires_at=time.time() + self.ttl, peer_url=self.peer_url)
            )
            held = {
                str(r[0])
                for r in conn.execute(
                    select(SessionOwner.session_id).where(
                        col(SessionOwner.process_id) == self.process_id
                    )
                )
            }
        with self._guard:
            lost = self._mine - held
            self._mine = held
        if lost:
            log.warning("lost ownership of %d session(s): %s", len(lost), ", ".join(sorted(lost)))
        return len(held)

    def release(self) -> None:
        """Give every lease up (a clean shutdown): the others claim the sessions at once."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(SessionOwner).where(col(SessionOwner.process_id) == self.process_id)
            )
        with self._guard:
            self._mine.clear()
