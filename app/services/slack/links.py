"""Slack identity in the control DB: which Nightshift user each Slack user acts as, and the
one-time link codes that bind them."""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from sqlalchemy import Engine, delete, update
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Invalid, NotFound
from app.models import User
from app.slack_tables import SlackLinkCode, SlackUserLink

LINK_CODE_TTL_S = 3600.0


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class SlackLinks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def user_for(self, slack_user_id: str) -> User | None:
        with DB(self.engine) as db:
            link = db.get(SlackUserLink, slack_user_id)
            return db.get(User, link.user_id) if link is not None else None

    def link_of(self, slack_user_id: str) -> SlackUserLink | None:
        with DB(self.engine) as db:
            return db.get(SlackUserLink, slack_user_id)

    def create_link_code(
        self, slack_user_id: str, team_id: str, slack_name: str, ttl: float = LINK_CODE_TTL_S
    ) -> str:
        """A new one-time link code for a Slack user; only its hash is kept."""
        code = secrets.token_urlsafe(24)
        now = time.time()
        with DB(self.engine) as db:
            db.add(
                SlackLinkCode(
                    code_hash=hash_code(code),
                    slack_user_id=slack_user_id,
                    team_id=team_id,
                    slack_name=slack_name[:200],
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
            db.commit()
        return code

    def last_code_at(self, slack_user_id: str) -> float | None:
        with DB(self.engine) as db:
            row = db.exec(
                select(SlackLinkCode.created_at)
                .where(SlackLinkCode.slack_user_id == slack_user_id)
                .order_by(col(SlackLinkCode.created_at).desc())
                .limit(1)
            ).first()
        return float(row) if row is not None else None

    def code(self, code: str) -> SlackLinkCode:
        """A usable code, or a NotFound that says why it is not."""
        return self.bound_code(hash_code(code))

    def bound_code(self, code_hash: str, slack_user_id: str | None = None) -> SlackLinkCode:
        """A usable code by its hash, still issued to `slack_user_id` when one is given (the
        binding an OAuth round trip carries); else a NotFound that says why not."""
        with DB(self.engine) as db:
            row = db.get(SlackLinkCode, code_hash)
        if row is None or (slack_user_id is not None and row.slack_user_id != slack_user_id):
            raise NotFound("this link is not valid: type `/nightshift link` in Slack for a new one")
        if row.used_at is not None:
            raise NotFound(
                "this link was already used: type `/nightshift link` in Slack for a new one"
            )
        if row.expires_at < time.time():
            raise NotFound("this link has expired: type `/nightshift link` in Slack for a new one")
        return row

    def redeem(self, code: str, user: User) -> SlackUserLink:
        """Bind the code's Slack user to `user`; a code works once."""
        return self.redeem_bound(hash_code(code), None, user)

    def redeem_bound(self, code_hash: str, slack_user_id: str | None, user: User) -> SlackUserLink:
        """Bind the Slack user of the code with this hash to `user`; a code works once, and
        only for the Slack user it was issued to."""
        row = self.bound_code(code_hash, slack_user_id)
        assert user.id is not None
        now = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            claimed = db.exec(
                update(SlackLinkCode)
                .where(
                    col(SlackLinkCode.code_hash) == row.code_hash,
                    col(SlackLinkCode.slack_user_id) == row.slack_user_id,
                    col(SlackLinkCode.used_at).is_(None),
                    col(SlackLinkCode.expires_at) > now,
                )
                .values(used_at=now, used_by=user.id)
            )
            if claimed.rowcount != 1:
                db.rollback()
                raise NotFound(
                    "this link was already used: type `/nightshift link` in Slack for a new one"
                )
            link = self._upsert_link(db, row.slack_user_id, user.id, row.team_id, row.slack_name)
            db.commit()
            db.refresh(link)
            return link

    def link(
        self, slack_user_id: str, user: User, team_id: str = "", slack_name: str = ""
    ) -> SlackUserLink:
        """Bind a Slack user to a Nightshift user directly (an operator's command)."""
        if not re.fullmatch(r"[UW][A-Z0-9]{2,}", slack_user_id):
            raise Invalid(
                f"{slack_user_id!r} is not a Slack user ID (U0123ABCD: in Slack, open the "
                "person's profile, then ⋮ → Copy member ID)"
            )
        assert user.id is not None
        with DB(self.engine, expire_on_commit=False) as db:
            link = self._upsert_link(db, slack_user_id, user.id, team_id, slack_name)
            db.commit()
            db.refresh(link)
            return link

    @staticmethod
    def _upsert_link(
        db: DB, slack_user_id: str, user_id: int, team_id: str, slack_name: str
    ) -> SlackUserLink:
        link = db.get(SlackUserLink, slack_user_id)
        if link is None:
            link = SlackUserLink(slack_user_id=slack_user_id, user_id=user_id)
        link.user_id = user_id
        link.team_id = team_id or link.team_id
        link.slack_name = slack_name[:200] or link.slack_name
        link.linked_at = time.time()
        db.add(link)
        return link

    def unlink(self, slack_user_id: str) -> bool:
        with DB(self.engine) as db:
            result = db.exec(
                delete(SlackUserLink).where(col(SlackUserLink.slack_user_id) == slack_user_id)
            )
            db.commit()
        return bool(result.rowcount)

    def links(self) -> list[tuple[SlackUserLink, User]]:
        with DB(self.engine) as db:
            rows = db.exec(
                select(SlackUserLink, User)
                .join(User, col(User.id) == SlackUserLink.user_id)
                .order_by(col(SlackUserLink.linked_at))
            ).all()
        return [(link, user) for link, user in rows]

    def prune(self) -> int:
        """Forget spent link codes."""
        with DB(self.engine) as db:
            codes = db.exec(
                delete(SlackLinkCode).where(col(SlackLinkCode.expires_at) < time.time() - 86400)
            )
            db.commit()
        return int(codes.rowcount)
