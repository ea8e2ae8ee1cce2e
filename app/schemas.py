"""The public shapes of the API: request bodies and responses (tables are in `app/models.py`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from workers.events import SessionStatus


def validation_message(exc: ValidationError) -> str:
    """A refused body as one line, each field's path with its complaint."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def utc_minute(stamp: float) -> str:
    """A time as people read it in messages and listings: `2026-12-07 22:00 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


ROW_MAX = 2**63 - 1
"""The largest row id or offset (BIGINT): bigger ones in a request are a 422, not an overflow."""


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    login: str
    name: str
    email: str


class _RepoFields(BaseModel):
    """What registering a repo and changing it share: its spec's fields and their limits."""

    model_config = ConfigDict(extra="forbid")

    setup: list[str] = Field(default_factory=list, max_length=50)
    warm: list[str] = Field(default_factory=list, max_length=50)
    env: dict[str, str] = Field(default_factory=dict)
    egress: list[str] = Field(default_factory=list, max_length=100)
    description: str = Field("", max_length=2000)
    pool_size: int = Field(0, ge=0, le=50)
    image: str | None = Field(
        None, max_length=300, description="OCI reference sandboxes run on (default: host tools)"
    )
    dockerfile: str | None = Field(
        None, max_length=500, description="Dockerfile in the repository to build the environment"
    )
    context: str | None = Field(
        None, max_length=500, description="The Dockerfile's build context, relative to the repo"
    )
    devcontainer: bool = Field(
        True,
        description="Let the repository's .devcontainer/devcontainer.json declare the "
        "environment when nothing else does (false: never read it)",
    )
    ci_fix_attempts: int | None = Field(
        None, ge=0, le=20, description="Failing checks sent back per PR (default: the server's)"
    )


class RepoCreate(_RepoFields):
    """`POST /api/repos`: a local path (local forge) or `owner/name` / a GitHub URL."""

    url: str = Field(min_length=1, max_length=1000)
    name: str | None = Field(None, min_length=1, max_length=200)
    base: str | None = Field(None, min_length=1, max_length=200)


class RepoUpdate(_RepoFields):
    """`PATCH /api/repos/{repo}`: the fields to change (never name or url); `null` clears
    `image`, `dockerfile`, `context`, `ci_fix_attempts`; an image drops a Dockerfile, and back."""

    base: str = Field("", min_length=1, max_length=200)

    def changes(self) -> dict[str, Any]:
        """What the request names, an environment it names replacing the stored one."""
        values = self.model_dump(exclude_unset=True)
        if values.get("image") is not None:
            values.setdefault("dockerfile", None)
            values.setdefault("context", None)
        if values.get("dockerfile") is not None:
            values.setdefault("image", None)
        return values


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
    image: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    devcontainer: bool = True
    ci_fix_attempts: int | None = None
    created_at: float
    removed_at: float | None = None
    """When it was removed (None: in use); listed only with `?removed=true`."""


class RepoAdded(RepoPublic):
    """`POST /api/repos`: the repo, and what to fix (a `.nightshift.toml` not on its branch)."""

    warnings: list[str] = Field(default_factory=list)


class RepoListed(RepoPublic):
    """`GET /api/repos`: a repo and its environment (no detail request per repo to list)."""

    environment: str
    """`host` (the host's tools), `image <ref>` or `dockerfile <path>`, as last built."""


class EffectiveField(BaseModel):
    """One value of a repo's effective spec and where it came from."""

    field: str
    value: Any
    origin: str
    """`stored`, `.nightshift.toml`, `.devcontainer/devcontainer.json`, `host`, or a `+` of them."""


class RepoDetail(RepoListed):
    """`GET /api/repos/{repo}`: the stored spec plus the effective one its base branch makes."""

    environment_digest: str | None = None
    """The declared image's digest its newest image runs on (None: host, unbuilt, Modal)."""
    effective: list[EffectiveField]
    effective_at: str | None
    """The commit the effective spec was read from (its newest build; None before one)."""


class SessionCreate(BaseModel):
    """`POST /api/sessions`."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=200, description="A repo's name, as listed")
    prompt: str = Field(min_length=1, description="What the agent should do")
    parent_id: str | None = Field(None, max_length=32)
    model: str | None = Field(
        None,
        max_length=200,
        description="A model from `GET /api/models`; the deployment's default when omitted",
    )

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


class Usage(BaseModel):
    """Tokens and estimated spend, summed over a session's (or a group's) model turns."""

    input_tokens: int = 0
    """Including cached input tokens."""
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    """Estimated from NIGHTSHIFT_MODEL_PRICES; turns of unpriced models count as 0."""

    @field_validator("cost_usd")
    @classmethod
    def _cents(cls, value: float) -> float:
        return round(value, 6)  # a sum of floats: drop the binary noise


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
    model: str | None
    """The model spec every prompt of this session runs on."""
    usage: Usage


class ModelPublic(BaseModel):
    name: str
    """A model spec, `<provider>:<model>`, as `POST /api/sessions` takes it."""
    default: bool


class ModelList(BaseModel):
    """`GET /api/models`: what NIGHTSHIFT_MODELS offers; the default first."""

    models: list[ModelPublic]
    default: str | None


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


class Health(BaseModel):
    status: str
    version: str
    mode: str
    sandbox: str
    database: str
    event_bus: str | None = None
    """Distributed: `ok` while the workers' event streams are read, else `unavailable`."""
    peer_url: str | None = None
    """Several API processes: where the others reach this one (None: it runs alone)."""
    sessions_owned: int | None = None
    """Several API processes: how many sessions this one owns."""


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
    desktop: bool = False
    """Whether this server shows sandboxes' desktops (NIGHTSHIFT_DESKTOP=1)."""
    ide: bool = False
    """Whether this server opens VS Code in sandboxes (NIGHTSHIFT_IDE=1)."""


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field("api", min_length=1, max_length=100, description="What the token is for")


class TokenCreated(BaseModel):
    token: str
    """Shown once; only its hash is stored."""
    label: str
    user: UserPublic


class SlackLinkCreate(BaseModel):
    """`POST /api/slack/link`: bind the Slack user behind a one-time code to the caller."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=16, max_length=200)


class SlackLinkPublic(BaseModel):
    slack_user_id: str
    slack_name: str
    user: UserPublic
    linked_at: float


class ViewerPublic(BaseModel):
    """Someone viewing a session now (one entry per person, however many tabs)."""

    login: str
    name: str
    since: float
    connections: int = 1


class PresencePublic(BaseModel):
    """Who is viewing a session; also a WebSocket frame `type: "presence"` (no `id`, unstored)."""

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
