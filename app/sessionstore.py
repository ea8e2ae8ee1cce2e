"""One SQLite file per session, written by exactly one object: its `SessionStore`.

A session file holds the prompt queue (FIFO, with authors), every event (the row id is the
per-session monotonic event id), the conversation and the tool calls. Files live at
`<data>/sessions/<id[:2]>/<id>.db`; nothing in one file refers to another session.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, func, update
from sqlmodel import Session as DB
from sqlmodel import SQLModel, col, select

from app.db import sqlite_engine
from app.session_tables import SESSION_TABLES, EventRow, MessageRow, Prompt, ToolCallRow
from workers.events import (
    Author,
    ChatMessage,
    Event,
    MessageAdded,
    PromptFinished,
    PromptStarted,
    ToolCalled,
    ToolResult,
    parse_event,
)
from workers.redact import Redactor

_FINISHED_STATE = {"done": "done", "limit": "done", "failed": "failed", "stopped": "stopped"}

# The event hot path (`SessionStore.append`) in plain SQL over the tables above.
_SOURCE_SEEN = "SELECT 1 FROM events WHERE source = ?"
_NEXT_EVENT_ID = "SELECT COALESCE(MAX(id), 0) + 1 FROM events"
_INSERT_EVENT = (
    "INSERT INTO events (id, type, ts, prompt_id, attempt, source, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_MESSAGE = "INSERT INTO messages (prompt_id, attempt, role, data) VALUES (?, ?, ?, ?)"
_INSERT_TOOL_CALL = (
    "INSERT INTO tool_calls (prompt_id, attempt, call_id, name, arguments, is_error, started_at) "
    "VALUES (?, ?, ?, ?, ?, 0, ?)"
)
_FINISH_TOOL_CALL = (
    "UPDATE tool_calls SET output = ?, is_error = ?, exit_code = ?, ms = ?, finished_at = ? "
    "WHERE id = (SELECT MAX(id) FROM tool_calls WHERE call_id = ?)"
)
_PROMPT_STARTED = "UPDATE prompts SET started_at = ? WHERE id = ? AND started_at IS NULL"
_PROMPT_FINISHED = "UPDATE prompts SET state = ?, finished_at = ? WHERE id = ?"
_RUNNING_PROMPTS_FINISHED = "UPDATE prompts SET state = ?, finished_at = ? WHERE state = 'running'"


class SessionStore:
    """The single writer of one session file. Thread-safe; readers never block it (WAL)."""

    def __init__(self, path: Path, redactor: Redactor) -> None:
        self.path = path
        self.redactor = redactor
        self._lock = threading.Lock()
        self._writer: Engine | None = None
        self._reader: Engine | None = None

    def open(self, create: bool = False) -> None:
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = sqlite_engine(self.path, writer=True)
        self._reader = sqlite_engine(self.path, writer=False)
        if create:
            SQLModel.metadata.create_all(self._writer, tables=SESSION_TABLES)

    def close(self) -> None:
        for engine in (self._writer, self._reader):
            if engine is not None:
                engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[DB]:
        assert self._writer is not None
        with self._lock, DB(self._writer, expire_on_commit=False) as db:
            yield db
            db.commit()

    @contextmanager
    def _write_sql(self) -> Iterator[Connection]:
        """A write transaction for plain SQL (the event hot path skips the ORM)."""
        assert self._writer is not None
        with self._lock, self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[DB]:
        assert self._reader is not None
        with DB(self._reader) as db:
            yield db

    # ------------------------------------------------------------ prompts

    def add_prompt(self, text: str, author: Author) -> tuple[Prompt, int]:
        """Queue a prompt; returns it and its place in the queue (0 = next to run)."""
        with self._write() as db:
            prompt = Prompt(
                text=text,
                author_id=author.id,
                author_login=author.login,
                author_name=author.name,
                author_email=author.email,
            )
            db.add(prompt)
            db.flush()
            ahead = db.exec(
                select(func.count())
                .select_from(Prompt)
                .where(Prompt.state == "queued", col(Prompt.id) < prompt.id)
            ).one()
            return prompt, int(ahead)

    def claim_next(self, runner: str) -> Prompt | None:
        with self._write() as db:
            prompt = db.exec(
                select(Prompt).where(Prompt.state == "queued").order_by(col(Prompt.id)).limit(1)
            ).first()
            if prompt is None:
                return None
            prompt.state = "running"
            prompt.runner = runner
            prompt.attempt += 1
            prompt.started_at = time.time()
            db.add(prompt)
            return prompt

    def cancel_queued(self) -> int:
        with self._write() as db:
            result = db.exec(
                update(Prompt)
                .where(col(Prompt.state) == "queued")
                .values(state="cancelled", finished_at=time.time())
            )
            return int(result.rowcount)

    def requeue_running(self) -> list[Prompt]:
        """Put prompts whose runner died back at the head of the queue; returns them."""
        with self._write() as db:
            running = list(db.exec(select(Prompt).where(Prompt.state == "running")).all())
            for prompt in running:
                prompt.state = "queued"
                prompt.runner = None
                db.add(prompt)
            return running

    def fail_running(self, reason: str) -> list[Prompt]:
        with self._write() as db:
            running = list(
                db.exec(select(Prompt).where(col(Prompt.state).in_(["running", "queued"]))).all()
            )
            for prompt in running:
                prompt.state = "failed"
                prompt.finished_at = time.time()
                db.add(prompt)
            return running

    def prompts(self) -> list[Prompt]:
        with self._read() as db:
            return list(db.exec(select(Prompt).order_by(col(Prompt.id))).all())

    def prompt(self, prompt_id: int) -> Prompt | None:
        with self._read() as db:
            return db.get(Prompt, prompt_id)

    def pending_count(self) -> int:
        with self._read() as db:
            return int(
                db.exec(
                    select(func.count()).select_from(Prompt).where(Prompt.state == "queued")
                ).one()
            )

    def running_by(self, runner: str) -> Prompt | None:
        """The prompt `runner` claimed and has not finished, if any."""
        with self._read() as db:
            return db.exec(
                select(Prompt).where(Prompt.state == "running", Prompt.runner == runner).limit(1)
            ).first()

    def has_running(self) -> bool:
        with self._read() as db:
            return (
                db.exec(select(Prompt.id).where(Prompt.state == "running").limit(1)).first()
                is not None
            )

    # ------------------------------------------------------------ events

    def append(self, event: Event, source: str | None = None) -> Event | None:
        """Persist an event (redacted) and what derives from it; returns it with its id.

        Returns None when `source` was stored before (a replayed bus entry). This is every
        session's hot path, so it speaks plain SQL to the tables defined above.
        """
        clean = parse_event(self.redactor.value(event.model_dump(mode="json")))
        with self._write_sql() as conn:
            sql = conn.exec_driver_sql
            if source is not None and sql(_SOURCE_SEEN, (source,)).first() is not None:
                return None
            # The writer holds the file's write lock (BEGIN IMMEDIATE): max + 1 is ours.
            clean.id = int(sql(_NEXT_EVENT_ID).scalar_one())
            sql(
                _INSERT_EVENT,
                (
                    clean.id,
                    clean.type,
                    clean.ts,
                    clean.prompt_id,
                    clean.attempt,
                    source,
                    clean.model_dump_json(),
                ),
            )
            self._derive(conn, clean)
            return clean

    @staticmethod
    def _derive(conn: Connection, event: Event) -> None:
        sql = conn.exec_driver_sql
        if isinstance(event, MessageAdded):
            sql(
                _INSERT_MESSAGE,
                (
                    event.prompt_id,
                    event.attempt,
                    event.message.role,
                    event.message.model_dump_json(),
                ),
            )
        elif isinstance(event, ToolCalled):
            sql(
                _INSERT_TOOL_CALL,
                (
                    event.prompt_id,
                    event.attempt,
                    event.call_id,
                    event.name,
                    json.dumps(event.arguments),
                    event.ts,
                ),
            )
        elif isinstance(event, ToolResult):
            sql(
                _FINISH_TOOL_CALL,
                (event.output, event.is_error, event.exit_code, event.ms, event.ts, event.call_id),
            )
            tool_message = ChatMessage(
                role="tool", text=event.output, tool_call_id=event.call_id, is_error=event.is_error
            )
            sql(
                _INSERT_MESSAGE,
                (event.prompt_id, event.attempt, "tool", tool_message.model_dump_json()),
            )
        elif isinstance(event, PromptStarted) and event.prompt_id is not None:
            sql(_PROMPT_STARTED, (event.ts, event.prompt_id))
        elif isinstance(event, PromptFinished):
            state = _FINISHED_STATE[event.outcome]
            if event.prompt_id is None:
                sql(_RUNNING_PROMPTS_FINISHED, (state, event.ts))
            else:
                sql(_PROMPT_FINISHED, (state, event.ts, event.prompt_id))

    def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as db:
            rows = db.exec(
                select(EventRow.data)
                .where(col(EventRow.id) > after)
                .order_by(col(EventRow.id))
                .limit(limit)
            ).all()
        return [parse_event(data) for data in rows]

    def events_of(self, types: list[str], prompt_id: int | None = None) -> list[Event]:
        """Every stored event of these types (of one prompt, all its attempts), oldest first."""
        query = select(EventRow.data).where(col(EventRow.type).in_(types))
        if prompt_id is not None:
            query = query.where(EventRow.prompt_id == prompt_id)
        with self._read() as db:
            rows = db.exec(query.order_by(col(EventRow.id))).all()
        return [parse_event(data) for data in rows]

    def last_event_id(self) -> int:
        with self._read() as db:
            return int(db.exec(select(func.coalesce(func.max(EventRow.id), 0))).one() or 0)

    def messages(self) -> list[ChatMessage]:
        """The conversation of finished prompts.

        A prompt that is queued again (its runner died) or running contributes nothing here:
        its next attempt rebuilds its own part from the prompt's events and continues it, so
        the attempts of a prompt together make one conversation.
        """
        with self._read() as db:
            rows = db.exec(select(MessageRow).order_by(col(MessageRow.id))).all()
            unfinished = set(
                db.exec(select(Prompt.id).where(col(Prompt.state).in_(["queued", "running"]))).all()
            )
            return [
                ChatMessage.model_validate_json(row.data)
                for row in rows
                if row.prompt_id not in unfinished
            ]

    def tool_calls(self) -> list[ToolCallRow]:
        with self._read() as db:
            return list(db.exec(select(ToolCallRow).order_by(col(ToolCallRow.id))).all())


class SessionFiles:
    """Opens session files on demand and keeps the most recently used ones open."""

    def __init__(self, root: Path, redactor: Redactor, keep_open: int = 256) -> None:
        self.root = root
        self.redactor = redactor
        self.keep_open = keep_open
        self._open: OrderedDict[str, SessionStore] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, session_id: str) -> Path:
        return self.root / session_id[:2] / f"{session_id}.db"

    def create(self, session_id: str) -> SessionStore:
        store = SessionStore(self.path(session_id), self.redactor)
        store.open(create=True)
        self._remember(session_id, store)
        return store

    def get(self, session_id: str) -> SessionStore:
        with self._lock:
            store = self._open.get(session_id)
            if store is not None:
                self._open.move_to_end(session_id)
                return store
        store = SessionStore(self.path(session_id), self.redactor)
        store.open(create=False)
        return self._remember(session_id, store)

    def _remember(self, session_id: str, store: SessionStore) -> SessionStore:
        with self._lock:
            existing = self._open.get(session_id)
            if existing is not None:
                store.close()
                return existing
            self._open[session_id] = store
            while len(self._open) > self.keep_open:
                _, old = self._open.popitem(last=False)
                old.close()
            return store

    def discard(self, session_id: str) -> None:
        """Close and delete the file of a session that was never indexed (its creation was
        refused after the file was made)."""
        with self._lock:
            store = self._open.pop(session_id, None)
        if store is not None:
            store.close()
        path = self.path(session_id)
        for leftover in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        ):
            leftover.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
