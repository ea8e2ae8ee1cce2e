"""The SQL of a session file: its schema as one script, the bytes of an empty file, and the
prepared statements `SessionStore` (`app/sessionstore.py`) runs.

Every session's hot paths are plain SQL over the tables of `app/session_tables.py`: a session
file is opened for each new session and on every cold read, so neither an engine nor the ORM
stands between a request and its file.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from app.db import sqlite_connect
from app.session_tables import SESSION_TABLES, Prompt, ToolCallRow

FINISHED_STATE = {"done": "done", "limit": "done", "failed": "failed", "stopped": "stopped"}

INSERT_EVENT = (
    "INSERT INTO events (id, type, ts, prompt_id, attempt, source, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO NOTHING"
)
"""An event, unless its bus entry (`source`, unique) was stored before: then no row."""
INSERT_MESSAGE = "INSERT INTO messages (prompt_id, attempt, role, data) VALUES (?, ?, ?, ?)"
INSERT_TOOL_CALL = (
    "INSERT INTO tool_calls (prompt_id, attempt, call_id, name, arguments, is_error, started_at) "
    "VALUES (?, ?, ?, ?, ?, 0, ?)"
)
FINISH_TOOL_CALL = (
    "UPDATE tool_calls SET output = ?, is_error = ?, exit_code = ?, ms = ?, finished_at = ? "
    "WHERE id = (SELECT MAX(id) FROM tool_calls WHERE call_id = ?)"
)
PROMPT_STARTED = "UPDATE prompts SET started_at = ? WHERE id = ? AND started_at IS NULL"
PROMPT_FINISHED = "UPDATE prompts SET state = ?, finished_at = ? WHERE id = ?"
RUNNING_PROMPTS_FINISHED = "UPDATE prompts SET state = ?, finished_at = ? WHERE state = 'running'"
INSERT_PROMPT = (
    "INSERT INTO prompts (text, author_id, author_login, author_name, author_email, state, "
    "attempt, created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?)"
)
QUEUED_AHEAD = "SELECT COUNT(*) FROM prompts WHERE state = 'queued' AND id < ?"
PROMPT_FIELDS = [
    "id",
    "text",
    "author_id",
    "author_login",
    "author_name",
    "author_email",
    "state",
    "attempt",
    "runner",
    "created_at",
    "started_at",
    "finished_at",
]
SELECT_PROMPTS = (
    "SELECT id, text, author_id, author_login, author_name, author_email, state, attempt, "
    "runner, created_at, started_at, finished_at FROM prompts"
)
NEXT_QUEUED = SELECT_PROMPTS + " WHERE state = 'queued' ORDER BY id LIMIT 1"
RUNNING = SELECT_PROMPTS + " WHERE state = 'running' ORDER BY id"
UNFINISHED = SELECT_PROMPTS + " WHERE state IN ('running', 'queued') ORDER BY id"
ALL_PROMPTS = SELECT_PROMPTS + " ORDER BY id"
ONE_PROMPT = SELECT_PROMPTS + " WHERE id = ?"
RUNNING_BY = SELECT_PROMPTS + " WHERE state = 'running' AND runner = ? LIMIT 1"
TOOL_CALL_FIELDS = [
    "id",
    "prompt_id",
    "attempt",
    "call_id",
    "name",
    "arguments",
    "output",
    "is_error",
    "exit_code",
    "ms",
    "started_at",
    "finished_at",
]
ALL_TOOL_CALLS = (
    "SELECT id, prompt_id, attempt, call_id, name, arguments, output, is_error, exit_code, ms, "
    "started_at, finished_at FROM tool_calls ORDER BY id"
)
EVENTS_OF_TYPES = (
    "SELECT data FROM events WHERE type IN (SELECT value FROM json_each(?)) "
    "AND (? IS NULL OR prompt_id = ?) ORDER BY id"
)


@cache
def session_schema() -> str:
    """The DDL of a session file, compiled once from the table models (one `executescript`)."""
    dialect = sqlite_dialect.dialect()
    statements = []
    for table in SESSION_TABLES:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        statements.extend(
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        )
    return "BEGIN;\n" + "".join(f"{s.strip()};\n" for s in statements) + "COMMIT;\n"


@cache
def empty_session_file() -> bytes:
    """The bytes of a new session file (WAL mode, every table and index, no rows): a new
    session writes them at once instead of building the schema statement by statement."""
    with tempfile.TemporaryDirectory(prefix="nightshift-session-") as scratch:
        path = Path(scratch) / "empty.db"
        conn = sqlite_connect(path)
        conn.executescript(session_schema())
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return path.read_bytes()


def write_new(path: Path, data: bytes) -> bool:
    """Write a file that must not exist yet, durably; False if it was already there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as new:
        new.write(data)
        new.flush()
        os.fsync(new.fileno())
    return True


def newest_event_id(conn: sqlite3.Connection) -> int:
    """The newest event id in a session file (0: none yet)."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


def prompt_of(row: tuple[Any, ...]) -> Prompt:
    return Prompt(**dict(zip(PROMPT_FIELDS, row, strict=True)))


def tool_call_of(row: tuple[Any, ...]) -> ToolCallRow:
    values = dict(zip(TOOL_CALL_FIELDS, row, strict=True))
    values["is_error"] = bool(values["is_error"])
    return ToolCallRow(**values)
