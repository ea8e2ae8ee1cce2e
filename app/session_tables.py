"""The tables of one session's SQLite file (see `app/sessionstore.py`, their only writer)."""

from __future__ import annotations

import time

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from images.sql import table_of
from workers.events import Author


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
    table_of(Prompt),
    table_of(EventRow),
    table_of(MessageRow),
    table_of(ToolCallRow),
]
