"""The Slack bot's conversation rows in the control DB: delivered events, threads and their
status messages, requests waiting for something, and thread participants.

Identity links and link codes live in `app/services/slack/links.py`; channel defaults and
classifier keywords in `app/services/slack/routing.py`.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from sqlalchemy import Engine, Table, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.liveness import process_alive
from app.models import Session
from app.slack_tables import SlackEventRecord, SlackParticipant, SlackRequest, SlackThread
from workers.events import ACTIVE_STATUSES

EVENT_RETENTION_S = 7 * 86400.0
STALE_EVENT_S = 300.0
"""An event not handled this long after it arrived is handled again, whoever had it."""
REQUEST_RETENTION_S = 86400.0
"""A request waiting for a link or a pick starts only within this long of being made."""


def process_owner() -> str:
    """This process, as `host-pid`."""
    return f"{socket.gethostname()}-{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process named `host-pid` may still be running (only this host can tell)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition("-")
    return process_alive(host, pid)


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
            result = db.exec(
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
            db.exec(
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
                db.exec(
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
        """Forget old handled events."""
        with DB(self.engine) as db:
            events = db.exec(
                delete(SlackEventRecord).where(
                    col(SlackEventRecord.received_at) < time.time() - EVENT_RETENTION_S
                )
            )
            db.commit()
        return int(events.rowcount)

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
            db.exec(
                update(SlackThread)
                .where(col(SlackThread.id) == thread_id)
                .values(status_ts=status_ts)
            )
            db.commit()

    def set_rendered(self, thread_id: int, rendered: str) -> None:
        with DB(self.engine) as db:
            db.exec(
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
            db.exec(update(SlackRequest).where(col(SlackRequest.id) == request_id).values(**values))
            db.commit()

    def claim_request(self, request_id: int, from_states: tuple[str, ...], to_state: str) -> bool:
        """Move a request on from one of `from_states`; False when someone else already did."""
        with DB(self.engine) as db:
            result = db.exec(
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
                db.exec(
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
