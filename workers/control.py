"""The control-plane port: what a worker asks of `app/`, which owns every session's state.

Workers never touch session files: they read through this port and write by publishing
events. `app/` implements it in-process for the embedded default and over HTTP for remote
workers, so the runner is the same code in both modes.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

from images.sandboxes.base import SnapshotRef
from images.spec import RepoSpec
from workers.events import Author, ChatMessage, Event

LeaseState = Literal["held", "lost", "stop"]


class PromptJob(BaseModel):
    id: int
    text: str
    author: Author
    created_at: float
    attempt: int = 1


class SessionContext(BaseModel):
    """Everything a runner needs to work on a session."""

    session_id: str
    repo: RepoSpec
    branch: str
    parent_id: str | None = None
    depth: int = 0
    pushed_sha: str | None = None
    """The branch tip this session last pushed; the next push must move it, not replace it."""
    history: list[ChatMessage] = Field(default_factory=list)
    authors: list[Author] = Field(default_factory=list)
    snapshot: SnapshotRef | None = None
    title: str = ""
    model: str | None = None
    """The session's model spec (`openai:gpt-4.1`); None: the deployment's default."""


class RunStart(BaseModel):
    """A runner's start on a session in one call: the lease, and with it the first prompt and
    the context to run it in (`ControlPlane.start_run`)."""

    leased: bool
    """False: another runner holds the session; nothing was claimed."""
    job: PromptJob | None = None
    """The prompt claimed for this runner; None when the queue is empty."""
    context: SessionContext | None = None
    """The session's context, read after the claim; given with a job only."""


class SessionSummary(BaseModel):
    """What the `session_status` tool reports about any session."""

    id: str
    status: str
    repo: str
    branch: str | None = None
    pr_url: str | None = None
    pr_state: str | None = None
    parent_id: str | None = None
    children: list[str] = Field(default_factory=list)
    last_events: list[str] = Field(default_factory=list)


class ArtifactStored(BaseModel):
    """Where the API keeps an artifact a worker handed it."""

    id: str
    """The content's SHA-256, hex."""
    url: str
    """Its link for people who can see the session."""
    bytes: int
    shared_url: str = ""
    """Its link for anyone holding it (an unguessable token): what a pull request shows."""


MAX_ARTIFACT_BYTES = 10 * 1024 * 1024
"""The largest artifact (a screenshot PNG) a worker may hand the API."""


class ControlPlane(Protocol):
    async def acquire_lease(self, session_id: str, runner_id: str, ttl_s: float) -> bool:
        """Become the only runner of a session; False when another runner holds it."""
        ...

    async def start_run(self, session_id: str, runner_id: str, ttl_s: float) -> RunStart:
        """`acquire_lease`, then `next_prompt` and, with a prompt, `session_context`: what a
        runner does first, in one round trip to the control plane."""
        ...

    async def renew_lease(self, session_id: str, runner_id: str, ttl_s: float) -> LeaseState:
        """Heartbeat; says whether the lease is still ours and whether a stop was requested."""
        ...

    async def release_lease(self, session_id: str, runner_id: str) -> bool:
        """Give the session up; True when prompts are still queued (the caller may go on)."""
        ...

    async def next_prompt(self, session_id: str, runner_id: str) -> PromptJob | None:
        """Claim the oldest queued prompt (FIFO), or None when the queue is empty."""
        ...

    async def session_context(self, session_id: str) -> SessionContext: ...

    async def stored_events(
        self, session_id: str, types: list[str], prompt_id: int | None = None
    ) -> list[Event]:
        """The session's stored events of these types, oldest first; with `prompt_id`, only
        that prompt's (every attempt). What a runner needs to resume a prompt or to count the
        session's spend."""
        ...

    async def spawn_session(
        self,
        parent_id: str,
        repo: str | None,
        prompt: str,
        author: Author,
        model: str | None = None,
    ) -> str:
        """Create a child session through the same service layer as any client; its id. The
        child runs on `model`, or on its parent's model when None."""
        ...

    async def session_status(self, session_id: str) -> SessionSummary: ...

    async def store_artifact(self, session_id: str, data: bytes) -> ArtifactStored:
        """Keep a PNG the session's agent made (at most `MAX_ARTIFACT_BYTES`) for people."""
        ...

    async def repo_specs(self) -> list[RepoSpec]:
        """Every registered repository (scheduled jobs walk them)."""
        ...

    async def run_job(self, name: str) -> str:
        """Run a job that belongs to the control plane (e.g. `reconcile_github`); its summary."""
        ...

    async def aclose(self) -> None:
        """Close its connections, on the loop that used them, once no runner uses it."""
        ...
