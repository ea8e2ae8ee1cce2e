"""Control DB tables and the public shapes the API returns.

The control DB is the index: users, tokens, repos, one row per session, pull requests. Each
session's own state (prompts, events, messages, tool calls) lives in its SQLite file; see
`app/sessionstore.py`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator
from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

from images.registry import IMAGE_TABLES
from workers.events import SessionStatus


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


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    login: str
    name: str
    email: str


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


class Repo(RepoBase, table=True):
    __tablename__ = "repos"

    id: int | None = Field(default=None, primary_key=True)
    setup: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    warm: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    egress: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: float = Field(default_factory=now)


class RepoCreate(BaseModel):
    """`POST /api/repos`: a local path (local forge) or `owner/name` / a GitHub URL."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=1000)
    name: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = Field(None, min_length=1, max_length=200)
    setup: list[str] = Field(default_factory=list, max_length=50)
    warm: list[str] = Field(default_factory=list, max_length=50)
    env: dict[str, str] = Field(default_factory=dict)
    egress: list[str] = Field(default_factory=list, max_length=100)
    description: str = Field("", max_length=2000)
    pool_size: int = Field(0, ge=0, le=50)


class RepoPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    url: str
    forge: str
    base: str
    setup: list[str]
    warm: list[str]
    env: dict[str, str]
    egress: list[str]
    description: str
    pool_size: int
    created_at: float


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


class SessionCreate(BaseModel):
    """`POST /api/sessions`."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=200, description="A repo's name, as listed")
    prompt: str = Field(min_length=1, description="What the agent should do")
    parent_id: str | None = Field(None, max_length=32)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty")
        return value


class PromptCreate(BaseModel):
    """`POST /api/sessions/{id}/prompts`: a follow-up, queued behind running work."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is empty")
        return value


class PromptPublic(BaseModel):
    id: int
    text: str
    author: UserPublic
    state: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 1
    position: int | None = None
    """Place in the queue (0 = next) while queued."""


class SessionPublic(BaseModel):
    id: str
    status: SessionStatus
    repo: str
    title: str
    author: UserPublic
    branch: str
    head_sha: str | None
    pr_url: str | None
    pr_number: int | None
    pr_state: str | None
    parent_id: str | None
    children: list[str]
    participants: list[UserPublic]
    prompt_count: int
    last_event_id: int
    start_mode: str | None
    start_ms: int | None
    first_model_ms: int | None
    created_at: float
    updated_at: float
    url: str


class SessionList(BaseModel):
    sessions: list[SessionPublic]
    total: int


class EventPublic(BaseModel):
    """An event as stored: `id` is the per-session monotonic id clients resume from."""

    model_config = ConfigDict(extra="allow")

    id: int
    type: str
    ts: float


class DiffPublic(BaseModel):
    base: str
    head: str | None
    branch: str
    diff: str


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


class PullRequestPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    session_id: str
    title: str
    body: str
    base: str
    head: str
    head_sha: str
    state: str
    url: str
    created_at: float


class LatencyStats(BaseModel):
    count: int
    p50_ms: int | None
    p95_ms: int | None


class DayStats(BaseModel):
    date: str
    sessions: int
    prompts: int


class Stats(BaseModel):
    window_days: int
    sessions: int
    merged: int
    """Sessions whose PR was merged: the primary measure of whether agents pay off."""
    merged_share: float
    per_day: list[DayStats]
    active_humans_5m: int
    active_humans: list[str]
    start_latency: dict[str, LatencyStats]
    """Prompt received to sandbox ready, by how the sandbox started (warm, image, snapshot, cold)."""
    first_model_request: LatencyStats


# ---------------------------------------------------------------- images and warm-up


class ImagePublic(BaseModel):
    """An image build attempt: `ready` images start sandboxes, `failed` ones keep their log."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    repo: str
    status: str
    """building, ready, failed, cold (a bare clone a session started from), collected."""
    trigger: str
    sha: str | None
    spec_hash: str | None
    runtime: str
    backend: str
    host: str
    created_at: float
    built_at: float | None
    duration_ms: int | None
    error: str | None
    log: str | None
    """The build log: listed for failed builds, always in `GET /api/images/{id}`."""


class ImageBuildRequest(BaseModel):
    """`POST /api/images/build`: build now instead of waiting for the schedule."""

    model_config = ConfigDict(extra="forbid")

    repos: list[str] | None = Field(None, description="Repo names; all repos when omitted")
    force: bool = Field(False, description="Build even when the tip and spec are unchanged")


class ImageBuildQueued(BaseModel):
    queued: list[str]


class WarmPublic(BaseModel):
    """The caller's warm sandbox on a repo: `warming`, `warm`, `failed`, or `cold` (none)."""

    repo: str
    state: str
    sandbox_id: str | None
    expires_at: float | None
    error: str | None = None


class Health(BaseModel):
    status: str
    version: str
    mode: str
    sandbox: str
    database: str


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


class GitHubLink(BaseModel):
    login: str
    linked_at: float


class Me(BaseModel):
    """`GET /api/me`: who the caller is and how they can sign in."""

    user: UserPublic
    github: GitHubLink | None
    """None when the person has not signed in with GitHub (their PRs cannot be opened as them)."""
    github_login_url: str | None
    """Where to link GitHub (None when GitHub sign-in is not configured)."""


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field("api", min_length=1, max_length=100, description="What the token is for")


class TokenCreated(BaseModel):
    token: str
    """Shown once; only its hash is stored."""
    label: str
    user: UserPublic


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


class SlackLinkCreate(BaseModel):
    """`POST /api/slack/link`: bind the Slack user behind a one-time code to the caller."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=16, max_length=200)


class SlackLinkPublic(BaseModel):
    slack_user_id: str
    slack_name: str
    user: UserPublic
    linked_at: float


# ---------------------------------------------------------------- web viewer: presence and sign-in


class ViewerPublic(BaseModel):
    """Someone viewing a session now (one entry per person, however many tabs)."""

    login: str
    name: str
    since: float
    connections: int = 1


class PresencePublic(BaseModel):
    """Who is viewing a session; also sent on the session's WebSocket as a frame with
    `type: "presence"` and no `id` (it is not an event and is never stored)."""

    type: str = "presence"
    session_id: str
    viewers: list[ViewerPublic]


class PresenceBeat(BaseModel):
    """`POST /api/sessions/{id}/presence`: a heartbeat from a client not on the WebSocket."""

    model_config = ConfigDict(extra="forbid")

    client_id: Annotated[
        str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ]
    """A random id the page picks once per load, so one person's tabs count separately."""


class TokenSignIn(BaseModel):
    """`POST /api/auth/token`: sign this browser in with an API token."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=200)


class SignInState(BaseModel):
    """Who this browser is signed in as, and how it can sign in."""

    user: UserPublic | None
    auth: str
    """`token` (API tokens, or GitHub when configured) or `local` (everyone is the local user)."""
    github_login: str | None
    """Where GitHub sign-in starts, when it is configured on this server."""


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
]
