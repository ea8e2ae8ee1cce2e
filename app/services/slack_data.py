"""The Slack bot's rows in the control DB: delivered events, threads, identity links, one-time
link codes, channel defaults, waiting requests, participants and classifier keywords."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from typing import Any

from sqlalchemy import Engine, Table, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Invalid, NotFound
from app.models import (
    RepoKeywords,
    Session,
    SlackChannelDefault,
    SlackEventRecord,
    SlackLinkCode,
    SlackParticipant,
    SlackRequest,
    SlackThread,
    SlackUserLink,
    User,
)
from workers.events import ACTIVE_STATUSES

LINK_CODE_TTL_S = 3600.0
EVENT_RETENTION_S = 7 * 86400.0
STALE_EVENT_S = 300.0
"""An event not handled this long after it arrived is handled again, whoever had it."""
REQUEST_RETENTION_S = 86400.0
"""A request waiting for a link or a pick starts only within this long of being made."""
_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def process_owner() -> str:
    """This process, as `host-pid`."""
    return f"{socket.gethostname()}-{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process named `host-pid` may still be running (only this host can tell)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def insert_ignore(db: DB, table: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row was inserted."""
    sa_table: Table = table.__table__
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(sa_table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(sa_table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported control DBs
        raise RuntimeError(f"unsupported control DB dialect {dialect!r}")
    # RETURNING tells both dialects' drivers apart reliably; rowcount does not (psycopg).
    key = next(iter(sa_table.primary_key.columns))
    return db.exec(stmt.returning(key)).first() is not None


def check_channel(channel_id: str) -> str:
    if not _CHANNEL_RE.match(channel_id):
        raise Invalid(
            f"{channel_id!r} is not a Slack channel ID: use the ID (C0123ABCD), shown at the "
            "bottom of the channel's details in Slack"
        )
    return channel_id


class SlackDirectory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ delivered events

    def record_event(
        self,
        event_id: str,
        team_id: str,
        type_: str,
        payload: dict[str, Any],
        owner: str | None = None,
    ) -> bool:
        """Keep an event before acknowledging it; False when this event_id was seen before."""
        with DB(self.engine) as db:
            inserted = insert_ignore(
                db,
                SlackEventRecord,
                {
                    "event_id": event_id,
                    "team_id": team_id,
                    "type": type_,
                    "payload": payload,
                    "state": "received",
                    "owner": owner or process_owner(),
                    "received_at": time.time(),
                },
            )
            db.commit()
        return inserted

    def event(self, event_id: str) -> SlackEventRecord | None:
        with DB(self.engine) as db:
            return db.get(SlackEventRecord, event_id)

    def claim_event(self, event_id: str) -> bool:
        """Take a received event for handling; False when it is already being handled."""
        with DB(self.engine) as db:
            result = db.exec(  # type: ignore[call-overload]
                update(SlackEventRecord)
                .where(
                    col(SlackEventRecord.event_id) == event_id,
                    col(SlackEventRecord.state) == "received",
                )
                .values(state="processing", owner=process_owner())
            )
            db.commit()
        return bool(result.rowcount == 1)

    def finish_event(self, event_id: str, error: str | None = None) -> None:
        with DB(self.engine) as db:
            db.exec(  # type: ignore[call-overload]
                update(SlackEventRecord)
                .where(col(SlackEventRecord.event_id) == event_id)
                .values(
                    state="failed" if error else "done",
                    processed_at=time.time(),
                    error=error[:500] if error else None,
                )
            )
            db.commit()

    def stranded_events(self, stale_after: float = STALE_EVENT_S) -> list[str]:
        """Events acknowledged but never handled: their process died (same host, pid gone) or
        they have waited longer than `stale_after`. They go back to `received`, oldest first,
        for this process to claim."""
        now = time.time()
        with DB(self.engine) as db:
            rows = db.exec(
                select(
                    SlackEventRecord.event_id, SlackEventRecord.owner, SlackEventRecord.received_at
                )
                .where(
                    col(SlackEventRecord.state).in_(("received", "processing")),
                    col(SlackEventRecord.received_at) > now - REQUEST_RETENTION_S,
                )
                .order_by(col(SlackEventRecord.received_at))
            ).all()
            stranded = [
                event_id
                for event_id, owner, received_at in rows
                if received_at < now - stale_after or not owner_alive(owner)
            ]
            if stranded:
                db.exec(  # type: ignore[call-overload]
                    update(SlackEventRecord)
                    .where(
                        col(SlackEventRecord.event_id).in_(stranded),
                        col(SlackEventRecord.state).in_(("received", "processing")),
                    )
                    .values(state="received")
                )
                db.commit()
        return stranded

    def prune(self) -> int:
        """Forget old handled events and spent link codes."""
        now = time.time()
        with DB(self.engine) as db:
            events = db.exec(  # type: ignore[call-overload]
                delete(SlackEventRecord).where(
                    col(SlackEventRecord.received_at) < now - EVENT_RETENTION_S
                )
            )
            codes = db.exec(  # type: ignore[call-overload]
                delete(SlackLinkCode).where(col(SlackLinkCode.expires_at) < now - 86400)
            )
            db.commit()
        return int(events.rowcount) + int(codes.rowcount)

    # ------------------------------------------------------------ threads and status messages

    def thread(self, channel_id: str, thread_ts: str) -> SlackThread | None:
        """The thread's current session (the newest one started in it)."""
        with DB(self.engine) as db:
            return db.exec(
                select(SlackThread)
                .where(SlackThread.channel_id == channel_id, SlackThread.thread_ts == thread_ts)
                .order_by(col(SlackThread.id).desc())
                .limit(1)
            ).first()

    def thread_by_status(self, channel_id: str, status_ts: str) -> SlackThread | None:
        with DB(self.engine) as db:
            return db.exec(
                select(SlackThread).where(
                    SlackThread.channel_id == channel_id, SlackThread.status_ts == status_ts
                )
            ).first()

    def thread_by_id(self, thread_id: int) -> SlackThread | None:
        with DB(self.engine) as db:
            return db.get(SlackThread, thread_id)

    def threads_of(self, session_id: str) -> list[SlackThread]:
        with DB(self.engine) as db:
            return list(
                db.exec(select(SlackThread).where(SlackThread.session_id == session_id)).all()
            )

    def bind_thread(
        self,
        channel_id: str,
        thread_ts: str,
        session_id: str,
        requested_by: str,
        how: str = "",
        status_ts: str | None = None,
    ) -> SlackThread:
        with DB(self.engine, expire_on_commit=False) as db:
            row = SlackThread(
                channel_id=channel_id,
                thread_ts=thread_ts,
                session_id=session_id,
                requested_by=requested_by,
                how=how[:200],
                status_ts=status_ts,
            )
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def set_status_ts(self, thread_id: int, status_ts: str) -> None:
        with DB(self.engine) as db:
            db.exec(  # type: ignore[call-overload]
                update(SlackThread)
                .where(col(SlackThread.id) == thread_id)
                .values(status_ts=status_ts)
            )
            db.commit()

    def set_rendered(self, thread_id: int, rendered: str) -> None:
        with DB(self.engine) as db:
            db.exec(  # type: ignore[call-overload]
                update(SlackThread)
                .where(col(SlackThread.id) == thread_id)
                .values(rendered=rendered)
            )
            db.commit()

    def open_threads(self) -> list[tuple[SlackThread, str]]:
        """Threads whose status message may still change or lags behind its session, with the
        session's status."""
        with DB(self.engine) as db:
            rows = db.exec(
                select(SlackThread, Session.status).join(
                    Session, col(Session.id) == SlackThread.session_id
                )
            ).all()
        out = []
        for thread, status in rows:
            shown = (thread.rendered or "").split(":", 1)[0]
            if status in ACTIVE_STATUSES or shown != status or thread.status_ts is None:
                out.append((thread, status))
        return out

    # ------------------------------------------------------------ identity

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
        with DB(self.engine) as db:
            row = db.get(SlackLinkCode, hash_code(code))
        if row is None:
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
        row = self.code(code)
        assert user.id is not None
        now = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            claimed = db.exec(  # type: ignore[call-overload]
                update(SlackLinkCode)
                .where(
                    col(SlackLinkCode.code_hash) == row.code_hash,
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
            result = db.exec(  # type: ignore[call-overload]
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

    # ------------------------------------------------------------ channel defaults

    def channel_default(self, channel_id: str) -> str | None:
        with DB(self.engine) as db:
            row = db.get(SlackChannelDefault, channel_id)
        return row.repo_name if row is not None else None

    def set_channel_default(self, channel_id: str, repo_name: str, set_by: str) -> None:
        check_channel(channel_id)
        with DB(self.engine) as db:
            row = db.get(SlackChannelDefault, channel_id) or SlackChannelDefault(
                channel_id=channel_id, repo_name=repo_name
            )
            row.repo_name, row.set_by, row.updated_at = repo_name, set_by[:100], time.time()
            db.add(row)
            db.commit()

    def clear_channel_default(self, channel_id: str) -> bool:
        with DB(self.engine) as db:
            result = db.exec(  # type: ignore[call-overload]
                delete(SlackChannelDefault).where(col(SlackChannelDefault.channel_id) == channel_id)
            )
            db.commit()
        return bool(result.rowcount)

    def channel_defaults(self) -> list[SlackChannelDefault]:
        with DB(self.engine) as db:
            return list(
                db.exec(
                    select(SlackChannelDefault).order_by(col(SlackChannelDefault.channel_id))
                ).all()
            )

    # ------------------------------------------------------------ classifier keywords

    def keywords(self) -> dict[int, list[str]]:
        with DB(self.engine) as db:
            return {row.repo_id: list(row.keywords) for row in db.exec(select(RepoKeywords)).all()}

    def set_keywords(self, repo_id: int, words: list[str]) -> list[str]:
        clean = sorted({w.strip().lower() for w in words if w.strip()})
        with DB(self.engine) as db:
            row = db.get(RepoKeywords, repo_id) or RepoKeywords(repo_id=repo_id)
            row.keywords = clean
            db.add(row)
            db.commit()
        return clean

    # ------------------------------------------------------------ requests waiting for something

    def add_request(self, **values: Any) -> SlackRequest:
        with DB(self.engine, expire_on_commit=False) as db:
            row = SlackRequest(**values)
            db.add(row)
            db.commit()
            db.refresh(row)
            return row

    def request(self, request_id: int) -> SlackRequest | None:
        with DB(self.engine) as db:
            return db.get(SlackRequest, request_id)

    def request_for_event(self, event_id: str) -> SlackRequest | None:
        with DB(self.engine) as db:
            return db.exec(select(SlackRequest).where(SlackRequest.event_id == event_id)).first()

    def update_request(self, request_id: int, **values: Any) -> None:
        values["updated_at"] = time.time()
        if values.get("error"):
            values["error"] = str(values["error"])[:500]
        with DB(self.engine) as db:
            db.exec(  # type: ignore[call-overload]
                update(SlackRequest).where(col(SlackRequest.id) == request_id).values(**values)
            )
            db.commit()

    def claim_request(self, request_id: int, from_states: tuple[str, ...], to_state: str) -> bool:
        """Move a request on from one of `from_states`; False when someone else already did."""
        with DB(self.engine) as db:
            result = db.exec(  # type: ignore[call-overload]
                update(SlackRequest)
                .where(col(SlackRequest.id) == request_id, col(SlackRequest.state).in_(from_states))
                .values(state=to_state, updated_at=time.time())
            )
            db.commit()
        return bool(result.rowcount == 1)

    def waiting_for_link(self, slack_user_id: str) -> list[SlackRequest]:
        with DB(self.engine) as db:
            return list(
                db.exec(
                    select(SlackRequest)
                    .where(
                        SlackRequest.slack_user_id == slack_user_id,
                        SlackRequest.state == "needs_link",
                        col(SlackRequest.created_at) > time.time() - REQUEST_RETENTION_S,
                    )
                    .order_by(col(SlackRequest.id))
                ).all()
            )

    # ------------------------------------------------------------ participants

    def touch_participant(self, channel_id: str, thread_ts: str, slack_user_id: str) -> None:
        now = time.time()
        with DB(self.engine) as db:
            if not insert_ignore(
                db,
                SlackParticipant,
                {
                    "channel_id": channel_id,
                    "thread_ts": thread_ts,
                    "slack_user_id": slack_user_id,
                    "first_seen": now,
                    "last_seen": now,
                },
            ):
                db.exec(  # type: ignore[call-overload]
                    update(SlackParticipant)
                    .where(
                        col(SlackParticipant.channel_id) == channel_id,
                        col(SlackParticipant.thread_ts) == thread_ts,
                        col(SlackParticipant.slack_user_id) == slack_user_id,
                    )
                    .values(last_seen=now)
                )
            db.commit()

    def participants(self, channel_id: str, thread_ts: str) -> list[str]:
        with DB(self.engine) as db:
            rows = db.exec(
                select(SlackParticipant.slack_user_id)
                .where(
                    SlackParticipant.channel_id == channel_id,
                    SlackParticipant.thread_ts == thread_ts,
                )
                .order_by(col(SlackParticipant.first_seen))
            ).all()
        return list(rows)
