"""Browser sign-in sessions: the cookie carries a random id; the control DB keeps its hash.

A stolen database does not yield usable cookies, signing out revokes the session at once, and
the cookie is HTTP-only and `SameSite=Lax`. Requests that change state and authenticate by
cookie must also come from our own origin (see `same_origin`), which stops cross-site forgery
even where `SameSite` is not enforced.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import Engine, update
from sqlmodel import Session as DB
from sqlmodel import col

from app.errors import Unauthorized
from app.models import User, WebSession

SESSION_TTL_S = 30 * 86400.0
_PREFIX = "nsw_"


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class WebSessions:
    def __init__(self, engine: Engine, ttl_s: float = SESSION_TTL_S) -> None:
        self.engine = engine
        self.ttl_s = ttl_s

    def create(self, user: User) -> str:
        """A new session for `user`; the returned value goes into the cookie, once."""
        assert user.id is not None
        raw = _PREFIX + secrets.token_urlsafe(32)
        with DB(self.engine) as db:
            db.add(
                WebSession(id_hash=_hash(raw), user_id=user.id, expires_at=time.time() + self.ttl_s)
            )
            db.commit()
        return raw

    def authenticate(self, raw: str) -> User:
        if not raw.startswith(_PREFIX):
            raise Unauthorized("invalid sign-in cookie; sign in again")
        now = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            row = db.get(WebSession, _hash(raw))
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                raise Unauthorized("your sign-in has expired or ended; sign in again")
            user = db.get(User, row.user_id)
            if user is None:
                raise Unauthorized("the signed-in user no longer exists")
            if now - row.last_seen_at > 300:
                row.last_seen_at = now
                db.add(row)
                db.commit()
            return user

    def revoke(self, raw: str) -> bool:
        with DB(self.engine) as db:
            result = db.exec(
                update(WebSession)
                .where(col(WebSession.id_hash) == _hash(raw), col(WebSession.revoked_at).is_(None))
                .values(revoked_at=time.time())
            )
            db.commit()
            return bool(result.rowcount)
