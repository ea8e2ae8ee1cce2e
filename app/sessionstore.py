"""One SQLite file per session, written by exactly one object: its `SessionStore`.

A session file holds the prompt queue (FIFO, with authors), every event (the row id is the
per-session monotonic event id), the conversation and the tool calls. Files live at
`<data>/sessions/<id[:2]>/<id>.db`; nothing in one file refers to another session.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import app.session_sql as q
from app.db import sqlite_connect
from app.session_tables import Prompt, ToolCallRow
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


class SessionStore:
    """The single writer of one session file. Thread-safe; readers never block it (WAL).

    One sqlite3 connection writes (BEGIN IMMEDIATE, under this store's lock); reads go through
    a second connection, opened on the first read, so a replay never waits for a write.
    `close` only lets the connections go: whoever still holds the store reopens them on use.
    """

    def __init__(self, path: Path, redactor: Redactor) -> None:
        self.path = path
        self.redactor = redactor
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._last_id: int | None = None
        """The newest event id written through this store (None: read it on the next write)."""

    def open(self, create: bool = False) -> None:
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = create and q.write_new(self.path, q.empty_session_file())
        self._writer = sqlite_connect(self.path)
        if create and not fresh:
            self._writer.executescript(q.session_schema())  # adds only what is missing

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._last_id = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: a write never fails half-way on a lock)."""
        with self._lock:
            conn = self._writer
            if conn is None:  # closed to make room (`SessionFiles`): a holder still writes
                conn = self._writer = sqlite_connect(self.path)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                self._last_id = None  # it may have counted a rolled-back event
                raise
            conn.commit()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite_connect(self.path)
            yield self._reader

    # ------------------------------------------------------------ prompts

    def add_prompt(self, text: str, author: Author) -> tuple[Prompt, int]:
        """Queue a prompt; returns it and its place in the queue (0 = next to run)."""
        created = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                q.INSERT_PROMPT,
                (text, author.id, author.login, author.name, author.email, created),
            )
            prompt_id = cursor.lastrowid
            ahead = conn.execute(q.QUEUED_AHEAD, (prompt_id,)).fetchone()[0]
        prompt = Prompt(
            id=prompt_id,
            text=text,
            author_id=author.id,
            author_login=author.login,
            author_name=author.name,
            author_email=author.email,
            state="queued",
            attempt=0,
            created_at=created,
        )
        return prompt, int(ahead)

    def claim_next(self, runner: str) -> Prompt | None:
        with self._write() as conn:
            row = conn.execute(q.NEXT_QUEUED).fetchone()
            if row is None:
                return None
            prompt = q.prompt_of(row)
            prompt.state = "running"
            prompt.runner = runner
            prompt.attempt += 1
            prompt.started_at = time.time()
            conn.execute(
                "UPDATE prompts SET state = 'running', runner = ?, attempt = ?, started_at = ? "
                "WHERE id = ?",
                (runner, prompt.attempt, prompt.started_at, prompt.id),
            )
            return prompt

    def cancel_queued(self) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE prompts SET state = 'cancelled', finished_at = ? WHERE state = 'queued'",
                (time.time(),),
            )
            return int(cursor.rowcount)

    def requeue_running(self) -> list[Prompt]:
        """Put prompts whose runner died back at the head of the queue; returns them."""
        with self._write() as conn:
            rows = conn.execute(q.RUNNING).fetchall()
            conn.execute(
                "UPDATE prompts SET state = 'queued', runner = NULL WHERE state = 'running'"
            )
        running = [q.prompt_of(row) for row in rows]
        for prompt in running:
            prompt.state, prompt.runner = "queued", None
        return running

    def fail_running(self, reason: str) -> list[Prompt]:
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(q.UNFINISHED).fetchall()
            conn.execute(
                "UPDATE prompts SET state = 'failed', finished_at = ? "
                "WHERE state IN ('running', 'queued')",
                (now,),
            )
        failed = [q.prompt_of(row) for row in rows]
        for prompt in failed:
            prompt.state, prompt.finished_at = "failed", now
        return failed

    def prompts(self) -> list[Prompt]:
        with self._read() as conn:
            rows = conn.execute(q.ALL_PROMPTS).fetchall()
        return [q.prompt_of(row) for row in rows]

    def authors(self) -> list[Author]:
        """Who prompted the session, in the order of their first prompt."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT author_id, author_login, author_name, author_email FROM prompts ORDER BY id"
            ).fetchall()
        return [Author(id=i, login=login, name=name, email=email) for i, login, name, email in rows]

    def prompt(self, prompt_id: int) -> Prompt | None:
        with self._read() as conn:
            row = conn.execute(q.ONE_PROMPT, (prompt_id,)).fetchone()
        return q.prompt_of(row) if row is not None else None

    def pending_count(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM prompts WHERE state = 'queued'").fetchone()[0]
            )

    def running_by(self, runner: str) -> Prompt | None:
        """The prompt `runner` claimed and has not finished, if any."""
        with self._read() as conn:
            row = conn.execute(q.RUNNING_BY, (runner,)).fetchone()
        return q.prompt_of(row) if row is not None else None

    def has_running(self) -> bool:
        with self._read() as conn:
            row = conn.execute("SELECT 1 FROM prompts WHERE state = 'running' LIMIT 1").fetchone()
        return row is not None

    # ------------------------------------------------------------ events

    def append(self, event: Event, source: str | None = None) -> Event | None:
        """Persist an event (redacted) and what derives from it; returns it with its id.

        Returns None when `source` was stored before (a replayed bus entry). This is every
        session's hot path, so it speaks plain SQL to the tables defined above.
        """
        clean = parse_event(self.redactor.value(event.model_dump(mode="json")))
        with self._write() as conn:
            if not self._insert(conn, clean, source):
                return None
            self._derive(conn, clean)
            return clean

    def _insert(self, conn: sqlite3.Connection, clean: Event, source: str | None) -> bool:
        """Insert the event with the next id (False: its `source` was stored before).

        The writer holds the file's write lock (BEGIN IMMEDIATE), so the id after the newest
        one is ours. The newest is remembered rather than read back per event; should another
        writer have added events meanwhile (a session that moved to another API process and
        back), the id is taken and the insert fails: the newest is read again, once.
        """
        if self._last_id is None:
            self._last_id = q.newest_event_id(conn)
        try:
            inserted = self._insert_as(conn, clean, source, self._last_id + 1)
        except sqlite3.IntegrityError:
            self._last_id = q.newest_event_id(conn)
            inserted = self._insert_as(conn, clean, source, self._last_id + 1)
        if inserted:
            self._last_id = clean.id
        return inserted

    @staticmethod
    def _insert_as(conn: sqlite3.Connection, clean: Event, source: str | None, id_: int) -> bool:
        clean.id = id_
        values = (clean.id, clean.type, clean.ts, clean.prompt_id, clean.attempt, source)
        return conn.execute(q.INSERT_EVENT, (*values, clean.model_dump_json())).rowcount == 1

    @staticmethod
    def _derive(conn: sqlite3.Connection, event: Event) -> None:
        sql = conn.execute
        if isinstance(event, MessageAdded):
            sql(
                q.INSERT_MESSAGE,
                (
                    event.prompt_id,
                    event.attempt,
                    event.message.role,
                    event.message.model_dump_json(),
                ),
            )
        elif isinstance(event, ToolCalled):
            sql(
                q.INSERT_TOOL_CALL,
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
                q.FINISH_TOOL_CALL,
                (event.output, event.is_error, event.exit_code, event.ms, event.ts, event.call_id),
            )
            tool_message = ChatMessage(
                role="tool", text=event.output, tool_call_id=event.call_id, is_error=event.is_error
            )
            sql(
                q.INSERT_MESSAGE,
                (event.prompt_id, event.attempt, "tool", tool_message.model_dump_json()),
            )
        elif isinstance(event, PromptStarted) and event.prompt_id is not None:
            sql(q.PROMPT_STARTED, (event.ts, event.prompt_id))
        elif isinstance(event, PromptFinished):
            state = q.FINISHED_STATE[event.outcome]
            if event.prompt_id is None:
                sql(q.RUNNING_PROMPTS_FINISHED, (state, event.ts))
            else:
                sql(q.PROMPT_FINISHED, (state, event.ts, event.prompt_id))

    def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT data FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [parse_event(data) for (data,) in rows]

    def events_of(self, types: list[str], prompt_id: int | None = None) -> list[Event]:
        """Every stored event of these types (of one prompt, all its attempts), oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                q.EVENTS_OF_TYPES, (json.dumps(types), prompt_id, prompt_id)
            ).fetchall()
        return [parse_event(data) for (data,) in rows]

    def last_event_id(self) -> int:
        with self._read() as conn:
            return q.newest_event_id(conn)

    def messages(self) -> list[ChatMessage]:
        """The conversation of finished prompts.

        A prompt that is queued again (its runner died) or running contributes nothing here:
        its next attempt rebuilds its own part from the prompt's events and continues it, so
        the attempts of a prompt together make one conversation.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT data FROM messages WHERE prompt_id IS NULL OR prompt_id NOT IN "
                "(SELECT id FROM prompts WHERE state IN ('queued', 'running')) ORDER BY id"
            ).fetchall()
        return [ChatMessage.model_validate_json(data) for (data,) in rows]

    def tool_calls(self) -> list[ToolCallRow]:
        with self._read() as conn:
            rows = conn.execute(q.ALL_TOOL_CALLS).fetchall()
        return [q.tool_call_of(row) for row in rows]


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
        """Keep `store` open; beyond `keep_open`, close the least recently used outside the
        lock (a close checkpoints and syncs, and every session's `get` takes this lock)."""
        with self._lock:
            kept = self._open.setdefault(session_id, store)
            excess = max(0, len(self._open) - self.keep_open)
            closing = [self._open.popitem(last=False)[1] for _ in range(excess)]
        for old in closing if kept is store else [store]:  # else: another thread opened it
            old.close()
        return kept

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
        """Close every open file. Closing the last connection of a file checkpoints its WAL
        into it (a sync each), so they are closed side by side rather than one by one."""
        with self._lock:
            stores, self._open = list(self._open.values()), OrderedDict()
        if not stores:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(stores))) as pool:
            list(pool.map(SessionStore.close, stores))
