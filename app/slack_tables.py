"""Control-DB tables of the Slack bot: deliveries seen, threads and their sessions, people's
links to Nightshift users, channel defaults, requests waiting for their author to link, and the
keywords that point the classifier at a repository."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from images.sql import table_of


def now() -> float:
    return time.time()


class SlackEventRecord(SQLModel, table=True):
    """One row per Events API delivery, keyed by Slack's `event_id`.

    It is inserted (or, for a retry, ignored) before Slack gets its 200, and keeps the payload
    until the event has been handled, so a restart picks up what was acknowledged but not done.
    """

    __tablename__ = "slack_events"
    __table_args__ = (Index("ix_slack_events_state", "state", "received_at"),)

    event_id: str = Field(primary_key=True, max_length=64)
    team_id: str = Field(default="", max_length=32)
    type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="received", max_length=16)
    """received, processing, done or failed."""
    owner: str | None = Field(default=None, max_length=200)
    """The process (`host-pid`) that received or is handling it."""
    received_at: float = Field(default_factory=now)
    processed_at: float | None = None
    error: str | None = Field(default=None, max_length=500)


class SlackThread(SQLModel, table=True):
    """A Slack thread a session lives in, and the one status message the bot keeps updated."""

    __tablename__ = "slack_threads"
    __table_args__ = (
        Index("ix_slack_threads_thread", "channel_id", "thread_ts"),
        Index("ix_slack_threads_status", "channel_id", "status_ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel_id: str = Field(max_length=32)
    thread_ts: str = Field(max_length=32)
    session_id: str = Field(foreign_key="sessions.id", index=True, max_length=32)
    status_ts: str | None = Field(default=None, max_length=32)
    requested_by: str = Field(default="", max_length=32)
    """The Slack user whose message started the session."""
    how: str = Field(default="", max_length=200)
    """How the repository was chosen, as the status message says it."""
    rendered: str | None = Field(default=None, max_length=64)
    """What the status message last showed (status and last event id)."""
    created_at: float = Field(default_factory=now)


class SlackUserLink(SQLModel, table=True):
    """A Slack user and the Nightshift user they act as (sessions, commits and PRs)."""

    __tablename__ = "slack_user_links"

    slack_user_id: str = Field(primary_key=True, max_length=32)
    team_id: str = Field(default="", max_length=32)
    user_id: int = Field(foreign_key="users.id", index=True)
    slack_name: str = Field(default="", max_length=200)
    linked_at: float = Field(default_factory=now)


class SlackLinkCode(SQLModel, table=True):
    """A one-time code that binds a Slack user to whoever opens it signed in (hash only)."""

    __tablename__ = "slack_link_codes"

    code_hash: str = Field(primary_key=True, max_length=64)
    slack_user_id: str = Field(index=True, max_length=32)
    team_id: str = Field(default="", max_length=32)
    slack_name: str = Field(default="", max_length=200)
    created_at: float = Field(default_factory=now)
    expires_at: float
    used_at: float | None = None
    used_by: int | None = Field(default=None, foreign_key="users.id")


class SlackChannelDefault(SQLModel, table=True):
    """The repository a channel's requests go to when the message names none."""

    __tablename__ = "slack_channel_defaults"

    channel_id: str = Field(primary_key=True, max_length=32)
    repo_name: str = Field(max_length=200)
    set_by: str = Field(default="", max_length=100)
    updated_at: float = Field(default_factory=now)


class SlackRequest(SQLModel, table=True):
    """A request from Slack that waits for something (a linked identity, a picked repo) or
    has started a session."""

    __tablename__ = "slack_requests"
    __table_args__ = (Index("ix_slack_requests_user_state", "slack_user_id", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: str | None = Field(default=None, max_length=64, index=True)
    kind: str = Field(default="new", max_length=16)
    """new (a session) or follow_up (a prompt on the thread's session)."""
    team_id: str = Field(default="", max_length=32)
    channel_id: str = Field(max_length=32)
    thread_ts: str = Field(max_length=32)
    message_ts: str = Field(max_length=32)
    slack_user_id: str = Field(max_length=32)
    raw: str = Field(default="", sa_type=Text)
    """The message as Slack sent it (links intact, for the classifier)."""
    text: str = Field(default="", sa_type=Text)
    """The prompt made from it."""
    context: str = Field(default="", sa_type=Text)
    """Earlier messages of the thread, given to the classifier and the agent."""
    state: str = Field(default="received", max_length=16)
    """received, needs_link, needs_repo, started, failed or cancelled."""
    repo_name: str | None = Field(default=None, max_length=200)
    picker_ts: str | None = Field(default=None, max_length=32)
    model: str | None = Field(default=None, max_length=200)
    """The model the message named (`model:NAME`); None: the deployment's default."""
    session_id: str | None = Field(default=None, foreign_key="sessions.id", max_length=32)
    error: str | None = Field(default=None, max_length=500)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class SlackParticipant(SQLModel, table=True):
    """Everyone who spoke to the bot in a thread, linked or not."""

    __tablename__ = "slack_participants"

    channel_id: str = Field(primary_key=True, max_length=32)
    thread_ts: str = Field(primary_key=True, max_length=32)
    slack_user_id: str = Field(primary_key=True, max_length=32)
    first_seen: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)


class RepoKeywords(SQLModel, table=True):
    """Words that point the Slack repo classifier at a repository."""

    __tablename__ = "repo_keywords"

    repo_id: int = Field(foreign_key="repos.id", primary_key=True)
    keywords: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


SLACK_TABLES = [
    table_of(SlackEventRecord),
    table_of(SlackThread),
    table_of(SlackUserLink),
    table_of(SlackLinkCode),
    table_of(SlackChannelDefault),
    table_of(SlackRequest),
    table_of(SlackParticipant),
    table_of(RepoKeywords),
]
