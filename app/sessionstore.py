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

from sqlalchemy import Engine, Index, Text, func, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel import Session as DB

from app.db import sqlite_engine
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


class Prompt(SQLModel, table=True):
    __tablename__ = "prompts"

    id: int | None = Field(default=None, primary_key=True)
    text: str = Field(sa_type=Text)
    author_id: int
    author_login: str
    author_name: str
    author_email: str
    state: str = Field(default="queued", index=True)
    attempt: int = 0
    runner: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def author(self) -> Author:
        return Author(
            id=self.author_id,
            login=self.author_login,
            name=self.author_name,
            email=self.author_email,
        )


class EventRow(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_source", "source", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(index=True)
    ts: float
    prompt_id: int | None = None
    attempt: int = 1
    source: str | None = None
    """Where the event came from on the bus (stream entry id), so a replay is stored once."""
    data: str = Field(sa_type=Text)


class MessageRow(SQLModel, table=True):
    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int | None = None
    attempt: int = 1
    role: str
    data: str = Field(sa_type=Text)


class ToolCallRow(SQLModel, table=True):
    __tablename__ = "tool_calls"

    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int | None = None
    attempt: int = 1
    call_id: str = Field(index=True)
    name: str
    arguments: str = Field(sa_type=Text)
    output: str | None = Field(default=None, sa_type=Text)
    is_error: bool = False
    exit_code: int | None = None
    ms: int | None = None
    started_at: float
    finished_at: float | None = None


SESSION_TABLES = [
    Prompt.__table__,  # type: ignore[attr-defined]
    EventRow.__table__,  # type: ignore[attr-defined]
    MessageRow.__table__,  # type: ignore[attr-defined]
    ToolCallRow.__table__,  # type: ignore[attr-defined]
]

_FINISHED_STATE = {"done": "done", "limit": "done", "failed": "failed", "stopped": "stopped"}


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
            result = db.exec(  # type: ignore[call-overload]
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
            )  # type: ignore[attr-defined]
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

        Returns None when `source` was stored before (a replayed bus entry).
        """
        clean = parse_event(self.redactor.value(event.model_dump(mode="json")))
        with self._write() as db:
            if (
                source is not None
                and db.exec(select(EventRow.id).where(EventRow.source == source)).first()
            ):
                return None
            row = EventRow(
                type=clean.type,
                ts=clean.ts,
                prompt_id=clean.prompt_id,
                attempt=clean.attempt,
                source=source,
                data="",
            )
            db.add(row)
            db.flush()
            assert row.id is not None
            clean.id = row.id
            row.data = clean.model_dump_json()
            self._derive(db, clean)
            return clean

    def _derive(self, db: DB, event: Event) -> None:
        if isinstance(event, MessageAdded):
            db.add(
                MessageRow(
                    prompt_id=event.prompt_id,
                    attempt=event.attempt,
                    role=event.message.role,
                    data=event.message.model_dump_json(),
                )
            )
        elif isinstance(event, ToolCalled):
            db.add(
                ToolCallRow(
                    prompt_id=event.prompt_id,
                    attempt=event.attempt,
                    call_id=event.call_id,
                    name=event.name,
                    arguments=json.dumps(event.arguments),
                    started_at=event.ts,
                )
            )
        elif isinstance(event, ToolResult):
            call = db.exec(
                select(ToolCallRow)
                .where(ToolCallRow.call_id == event.call_id)
                .order_by(col(ToolCallRow.id).desc())
            ).first()
            if call is not None:
                call.output, call.is_error, call.exit_code = (
                    event.output,
                    event.is_error,
                    event.exit_code,
                )
                call.ms, call.finished_at = event.ms, event.ts
                db.add(call)
            tool_message = ChatMessage(
                role="tool", text=event.output, tool_call_id=event.call_id, is_error=event.is_error
            )
            db.add(
                MessageRow(
                    prompt_id=event.prompt_id,
                    attempt=event.attempt,
                    role="tool",
                    data=tool_message.model_dump_json(),
                )
            )
        elif isinstance(event, PromptStarted) and event.prompt_id is not None:
            prompt = db.get(Prompt, event.prompt_id)
            if prompt is not None and prompt.started_at is None:
                prompt.started_at = event.ts
                db.add(prompt)
        elif isinstance(event, PromptFinished):
            query = select(Prompt).where(Prompt.state == "running")
            if event.prompt_id is not None:
                query = select(Prompt).where(Prompt.id == event.prompt_id)
            for prompt in db.exec(query).all():
                prompt.state = _FINISHED_STATE[event.outcome]
                prompt.finished_at = event.ts
                db.add(prompt)

    def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as db:
            rows = db.exec(
                select(EventRow.data)
                .where(col(EventRow.id) > after)
                .order_by(col(EventRow.id))
                .limit(limit)
            ).all()
        return [parse_event(data) for data in rows]

    def last_event_id(self) -> int:
        with self._read() as db:
            return int(db.exec(select(func.coalesce(func.max(EventRow.id), 0))).one() or 0)

    def messages(self) -> list[ChatMessage]:
        """The conversation of finished prompts, excluding attempts that were interrupted.

        A prompt that is queued again (its runner died) or running contributes nothing: its
        next attempt starts from the conversation as it was before the prompt.
        """
        with self._read() as db:
            rows = db.exec(select(MessageRow).order_by(col(MessageRow.id))).all()
            unfinished = set(
                db.exec(select(Prompt.id).where(col(Prompt.state).in_(["queued", "running"]))).all()
            )
            latest: dict[int | None, int] = {}
            for row in rows:
                latest[row.prompt_id] = max(latest.get(row.prompt_id, 0), row.attempt)
            return [
                ChatMessage.model_validate_json(row.data)
                for row in rows
                if row.attempt == latest[row.prompt_id] and row.prompt_id not in unfinished
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

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                store.close()
            self._open.clear()
