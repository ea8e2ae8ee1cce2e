"""Control DB tables (the public shapes the API returns are in `app/schemas.py`).

The control DB is the index: users, tokens, repos, one row per session, pull requests. Each
session's own state (prompts, events, messages, tool calls) lives in its SQLite file; see
`app/sessionstore.py`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

from app.github_tables import GITHUB_TRIGGER_TABLES
from images.registry import IMAGE_TABLES


def now() -> float:
    return time.time()


# ---------------------------------------------------------------- users and tokens


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    login: str = Field(index=True, unique=True, max_length=100)
    name: str = Field(max_length=200)
    email: str = Field(max_length=320)
    created_at: float = Field(default_factory=now)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    created_at: float = Field(default_factory=now)
    last_used_at: float | None = None
    revoked_at: float | None = None


# ---------------------------------------------------------------- repos


class RepoBase(SQLModel):
    name: str = Field(index=True, unique=True, max_length=200)
    url: str = Field(max_length=1000)
    forge: str = Field(default="local", max_length=20)
    base: str = Field(default="main", max_length=200)
    description: str = Field(default="", max_length=2000)
    pool_size: int = 0
    image: str | None = Field(default=None, max_length=300)
    dockerfile: str | None = Field(default=None, max_length=500)
    context: str | None = Field(default=None, max_length=500)
    devcontainer: bool = True
    """Whether the repository's devcontainer.json may declare its environment."""
    ci_fix_attempts: int | None = None
    """This repo's own cap of failing checks sent back per PR (None: NIGHTSHIFT_CI_FIX_ATTEMPTS)."""


class Repo(RepoBase, table=True):
    __tablename__ = "repos"

    id: int | None = Field(default=None, primary_key=True)
    setup: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    warm: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    egress: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=now)


# ---------------------------------------------------------------- sessions


class Session(SQLModel, table=True):
    """The index row of a session; its contents live in the session's own SQLite file."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_created", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    repo_id: int = Field(foreign_key="repos.id", index=True)
    repo_name: str = Field(max_length=200)
    title: str = Field(default="", max_length=200)
    status: str = Field(default="queued", index=True, max_length=16)
    author_id: int = Field(foreign_key="users.id", index=True)
    parent_id: str | None = Field(default=None, foreign_key="sessions.id", index=True)
    depth: int = 0
    branch: str = Field(max_length=200)
    head_sha: str | None = Field(default=None, max_length=64)
    base_sha: str | None = Field(default=None, max_length=64)
    pr_number: int | None = None
    pr_url: str | None = Field(default=None, max_length=500)
    pr_state: str | None = Field(default=None, max_length=16)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    last_event_id: int = 0
    prompt_count: int = 0
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_expires_at: float | None = None
    stop_requested: bool = False
    attempts: int = 0
    start_mode: str | None = Field(default=None, max_length=16)
    start_ms: int | None = None
    first_model_ms: int | None = None
    snapshot: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    model: str | None = Field(default=None, max_length=200)
    """The model spec every prompt of the session runs on (None: rows from before 0006)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    """Estimated spend so far, summed from the session's `usage` events."""


class Participant(SQLModel, table=True):
    __tablename__ = "session_participants"

    session_id: str = Field(foreign_key="sessions.id", primary_key=True, max_length=32)
    user_id: int = Field(foreign_key="users.id", primary_key=True, index=True)
    role: str = Field(default="prompter", max_length=16)
    joined_at: float = Field(default_factory=now)


class PromptIndex(SQLModel, table=True):
    """One row per prompt, for cross-session questions (stats) without opening session files."""

    __tablename__ = "prompt_index"
    __table_args__ = (Index("ix_prompt_index_created", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="sessions.id", index=True, max_length=32)
    prompt_id: int
    user_id: int = Field(foreign_key="users.id", index=True)
    source: str = Field(default="api", max_length=16)
    """Where it came from: api, cli, web, slack, or agent (spawned by another session)."""
    created_at: float = Field(default_factory=now)
    start_mode: str | None = Field(default=None, max_length=16)
    start_ms: int | None = None
    first_model_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0


# ---------------------------------------------------------------- pull requests (local forge)


class PullRequest(SQLModel, table=True):
    __tablename__ = "pull_requests"

    id: int | None = Field(default=None, primary_key=True)
    repo_id: int = Field(foreign_key="repos.id", index=True)
    number: int
    session_id: str = Field(foreign_key="sessions.id", index=True, max_length=32)
    title: str = Field(max_length=300)
    body: str = ""
    author_id: int = Field(foreign_key="users.id")
    base: str = Field(max_length=200)
    head: str = Field(max_length=200)
    head_sha: str = Field(max_length=64)
    state: str = Field(default="open", max_length=16)
    url: str = Field(max_length=500)
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    merge_base: str | None = Field(default=None, max_length=64)
    """Where the branch left its base, kept at merge so the merged diff stays readable."""
    merged_sha: str | None = Field(default=None, max_length=64)
    closed_by_id: int | None = Field(default=None, foreign_key="users.id")
    """Who merged or closed it."""
    closed_at: float | None = None
    draft: bool = False
    """Opened while the session's verify commands still failed: not mergeable until someone
    marks it ready (or a later push passes them)."""


# ---------------------------------------------------------------- GitHub and web sign-in


class GitHubAccount(SQLModel, table=True):
    """A person's linked GitHub identity and their user-to-server tokens (Fernet-encrypted)."""

    __tablename__ = "github_accounts"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    github_id: int = Field(sa_column=Column(BigInteger, unique=True, nullable=False, index=True))
    login: str = Field(max_length=100)
    access_token: str = Field(sa_type=Text)
    access_expires_at: float | None = None
    refresh_token: str | None = Field(default=None, sa_type=Text)
    refresh_expires_at: float | None = None
    version: int = 0
    """Bumped on every token write: a refresher stores its pair only if nobody else did first."""
    linked_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class GitHubInstallation(SQLModel, table=True):
    """Where the App is installed, kept current by `installation*` webhooks."""

    __tablename__ = "github_installations"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    account: str = Field(max_length=100)
    account_type: str = Field(default="User", max_length=20)
    repository_selection: str = Field(default="selected", max_length=10)
    repositories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    suspended: bool = False
    updated_at: float = Field(default_factory=now)


class GitHubDelivery(SQLModel, table=True):
    """One webhook delivery, by `X-GitHub-Delivery`: a redelivery of a known id is a no-op."""

    __tablename__ = "github_deliveries"
    __table_args__ = (Index("ix_github_deliveries_status", "status", "received_at"),)

    id: str = Field(primary_key=True, max_length=64)
    event: str = Field(max_length=64)
    action: str | None = Field(default=None, max_length=64)
    payload: str = Field(default="", sa_type=Text)
    """The raw body until processed, then emptied (the id is kept for de-duplication)."""
    status: str = Field(default="queued", max_length=16)
    attempts: int = 0
    error: str | None = Field(default=None, max_length=2000)
    received_at: float = Field(default_factory=now)
    processed_at: float | None = None


class WebSession(SQLModel, table=True):
    """A browser sign-in; the cookie holds a random id, the table only its SHA-256."""

    __tablename__ = "web_sessions"

    id_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    created_at: float = Field(default_factory=now)
    expires_at: float
    last_seen_at: float = Field(default_factory=now)
    revoked_at: float | None = None


# ---------------------------------------------------------------- Slack


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


CONTROL_TABLES = [
    User.__table__,  # type: ignore[attr-defined]
    ApiToken.__table__,  # type: ignore[attr-defined]
    Repo.__table__,  # type: ignore[attr-defined]
    Session.__table__,  # type: ignore[attr-defined]
    Participant.__table__,  # type: ignore[attr-defined]
    PromptIndex.__table__,  # type: ignore[attr-defined]
    PullRequest.__table__,  # type: ignore[attr-defined]
    GitHubAccount.__table__,  # type: ignore[attr-defined]
    GitHubInstallation.__table__,  # type: ignore[attr-defined]
    GitHubDelivery.__table__,  # type: ignore[attr-defined]
    WebSession.__table__,  # type: ignore[attr-defined]
    # Slack
    SlackEventRecord.__table__,  # type: ignore[attr-defined]
    SlackThread.__table__,  # type: ignore[attr-defined]
    SlackUserLink.__table__,  # type: ignore[attr-defined]
    SlackLinkCode.__table__,  # type: ignore[attr-defined]
    SlackChannelDefault.__table__,  # type: ignore[attr-defined]
    SlackRequest.__table__,  # type: ignore[attr-defined]
    SlackParticipant.__table__,  # type: ignore[attr-defined]
    RepoKeywords.__table__,  # type: ignore[attr-defined]
    *IMAGE_TABLES,
    *GITHUB_TRIGGER_TABLES,
]
