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
from app.slack_tables import SLACK_TABLES
from images.registry import IMAGE_TABLES
from images.sql import table_of


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
    removed_at: float | None = None
    """When the repo was removed (None: in use). The row stays: sessions and pull requests
    name it, and registering the name again brings it back."""


# ---------------------------------------------------------------- sessions


class Session(SQLModel, table=True):
    """The index row of a session; its contents live in the session's own SQLite file."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_created", "created_at"),
        Index("ix_sessions_updated", "updated_at"),  # the live list's poll (several processes)
    )

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
    last_push: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The last `branch_pushed` event, what the PR is (re)opened from. None with a `head_sha`:
    a row from before 0014, filled from the session's events on first read."""
    last_verify: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The last `verify` event: the checks a local PR shows for the push that follows it."""
    pr_failures: int = 0
    """How many times opening the PR failed (`pr_failed` errors); the reconciler retries a few."""


class SessionOwner(SQLModel, table=True):
    """Which API process owns a session (several API processes): only the owner writes the
    session's file and runs its runners; others forward to `peer_url`. A lease, renewed by the
    owner's heartbeat (`app/services/ownership.py`); an expired one may be claimed."""

    __tablename__ = "session_owners"
    __table_args__ = (Index("ix_session_owners_process", "process_id"),)

    session_id: str = Field(primary_key=True, max_length=32)
    process_id: str = Field(max_length=200)
    peer_url: str = Field(max_length=500)
    expires_at: float


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
    checks: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    """The session's last `verify` event before the push of `checks_sha` (None: none ran)."""
    checks_sha: str | None = Field(default=None, max_length=64)
    """The head `checks` belong to; another head (rows from before 0014): read from the log."""


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


CONTROL_TABLES = [
    table_of(User),
    table_of(ApiToken),
    table_of(Repo),
    table_of(Session),
    table_of(SessionOwner),
    table_of(Participant),
    table_of(PromptIndex),
    table_of(PullRequest),
    table_of(GitHubAccount),
    table_of(GitHubInstallation),
    table_of(GitHubDelivery),
    table_of(WebSession),
    *SLACK_TABLES,
    *IMAGE_TABLES,
    *GITHUB_TRIGGER_TABLES,
]
