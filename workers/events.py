"""Events: every observable step of a session as one typed record.

Workers create events and publish them on the bus; `app/` persists each one in the session's
own SQLite file, which assigns the per-session monotonic `id`, then fans it out to clients.
This module is the contract shared by workers, the control plane and every client.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from images.sandboxes.base import SnapshotRef, StartMode
from integrations.llm.types import ChatMessage as ChatMessage
from integrations.llm.types import ToolCallRecord as ToolCallRecord

SessionStatus = Literal["queued", "starting", "running", "idle", "finished", "failed", "stopped"]
ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "starting", "running", "idle"})
PromptState = Literal["queued", "running", "done", "failed", "stopped", "cancelled"]
PromptOutcome = Literal["done", "failed", "stopped", "limit"]


class Author(BaseModel):
    """Who wrote a prompt; commits and PRs are made in this name."""

    model_config = ConfigDict(frozen=True)

    id: int
    login: str
    name: str
    email: str

    def git_identity(self) -> str:
        return f"{self.name} <{self.email}>"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = 0
    """Per-session monotonic id, assigned when `app/` persists the event (0 before that)."""
    ts: float = Field(default_factory=time.time)
    prompt_id: int | None = None
    attempt: int = 1
    """Run attempt of the prompt; events of an interrupted attempt keep their number."""


class StatusChanged(_Event):
    type: Literal["status"] = "status"
    status: SessionStatus
    reason: str | None = None


class PromptQueued(_Event):
    type: Literal["prompt_queued"] = "prompt_queued"
    author: Author
    text: str
    position: int


class PromptStarted(_Event):
    type: Literal["prompt_started"] = "prompt_started"
    author: Author
    ms_waiting: int = 0


class PromptFinished(_Event):
    type: Literal["prompt_finished"] = "prompt_finished"
    outcome: PromptOutcome
    summary: str = ""


class SandboxReady(_Event):
    type: Literal["sandbox_ready"] = "sandbox_ready"
    mode: StartMode
    sandbox_id: str
    image: str
    ms_since_prompt: int


class SyncDone(_Event):
    type: Literal["sync_done"] = "sync_done"
    sha: str
    ms: int


class ModelRequest(_Event):
    type: Literal["model_request"] = "model_request"
    model: str
    step: int
    ms_since_prompt: int


class TextDelta(_Event):
    type: Literal["text_delta"] = "text_delta"
    text: str


class MessageAdded(_Event):
    type: Literal["message"] = "message"
    message: ChatMessage


class ToolCalled(_Event):
    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResult(_Event):
    type: Literal["tool_result"] = "tool_result"
    call_id: str
    name: str
    output: str
    is_error: bool = False
    exit_code: int | None = None
    ms: int = 0


class ModelRetry(_Event):
    type: Literal["model_retry"] = "model_retry"
    retry: int
    reason: str
    wait_s: float


class UsageReported(_Event):
    type: Literal["usage"] = "usage"
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    cost_usd: float | None = None
    """Estimated from NIGHTSHIFT_MODEL_PRICES; None when the model has no price."""


class CommitCreated(_Event):
    type: Literal["commit_created"] = "commit_created"
    sha: str
    author: str
    co_authors: list[str] = Field(default_factory=list)
    message: str


class BranchPushed(_Event):
    type: Literal["branch_pushed"] = "branch_pushed"
    branch: str
    sha: str
    base: str
    base_sha: str
    title: str = ""
    body: str = ""
    draft: bool = False
    """The verify commands still failed after the last attempt."""


class SnapshotTaken(_Event):
    """The sandbox's changes were saved; the next prompt of this session starts from them."""

    type: Literal["snapshot"] = "snapshot"
    snapshot: SnapshotRef


class PrOpened(_Event):
    type: Literal["pr_opened"] = "pr_opened"
    url: str
    number: int
    state: str = "open"


class PrStateChanged(_Event):
    type: Literal["pr_state"] = "pr_state"
    state: str


class ChildSpawned(_Event):
    type: Literal["child_spawned"] = "child_spawned"
    child_id: str
    repo: str
    prompt: str


class DesktopControlTaken(_Event):
    """A participant took control of the session's desktop: their keyboard and mouse reach
    the sandbox until they disconnect."""

    type: Literal["desktop_control_taken"] = "desktop_control_taken"
    login: str
    name: str = ""


class IdeFilesEdited(_Event):
    """A person changed files through the session's IDE (VS Code in the browser); the next
    commit names them as a co-author."""

    type: Literal["ide_files_edited"] = "ide_files_edited"
    author: Author
    files: list[str] = Field(default_factory=list)
    more: int = 0
    """Changed files left out of `files` (it names at most 200)."""


class Notice(_Event):
    """Something a person should read or act on (a sign-in link, a queued build)."""

    type: Literal["notice"] = "notice"
    message: str
    link: str | None = None
    follow_up: bool = False
    """It says where prompt `prompt_id` came from (a GitHub comment, review or failing check);
    clients show it with that prompt."""


class VerifyCheck(BaseModel):
    command: str
    ok: bool
    exit_code: int
    output: str = ""


class VerifyRan(_Event):
    """The repository's verify commands ran at `finish`."""

    type: Literal["verify"] = "verify"
    round: int
    """Which run of the verify commands this was (`attempt` is the prompt's run attempt)."""
    max_rounds: int
    passed: bool
    checks: list[VerifyCheck] = Field(default_factory=list)


class InstructionsLoaded(_Event):
    """Which repository instructions and skills the agent was given for this run."""

    type: Literal["instructions_loaded"] = "instructions_loaded"
    agents_md: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)


class ContextCompacted(_Event):
    """The conversation was shortened to fit the model's context window."""

    type: Literal["context_compacted"] = "context_compacted"
    reason: Literal["threshold", "refused"]
    tokens_before: int
    tokens_after: int
    window: int
    outputs_elided: int = 0
    summary: str = ""


class RunResumed(_Event):
    """A prompt whose runner died goes on from its stored conversation, not from scratch."""

    type: Literal["run_resumed"] = "run_resumed"
    from_turn: int
    """The model turn the run continues with (the turns before it are not asked again)."""
    rerun: list[str] = Field(default_factory=list)
    """Call ids of tool calls that had not returned and were run again."""
    unsaved: list[str] = Field(default_factory=list)
    """Call ids of completed writing calls whose effect the restored workspace may lack (the
    worker died before the checkpoint after them)."""
    note: str = ""
    """What the model was told (it is added to the system prompt of the resumed attempt)."""


class ArtifactCreated(_Event):
    """A file the agent made for people to look at (a screenshot), kept by the API and served
    at `url` (`GET /api/sessions/{id}/artifacts/{artifact_id}`) to those who see the session."""

    type: Literal["artifact_created"] = "artifact_created"
    artifact_id: str
    url: str
    media_type: str = "image/png"
    kind: Literal["screenshot"] = "screenshot"
    title: str = ""
    """What it shows (the page's URL)."""
    width: int = 0
    height: int = 0
    bytes: int = 0


class ErrorRaised(_Event):
    type: Literal["error"] = "error"
    code: str
    message: str


Event = Annotated[
    StatusChanged
    | PromptQueued
    | PromptStarted
    | PromptFinished
    | SandboxReady
    | SyncDone
    | ModelRequest
    | TextDelta
    | MessageAdded
    | ToolCalled
    | ToolResult
    | ModelRetry
    | UsageReported
    | CommitCreated
    | BranchPushed
    | SnapshotTaken
    | PrOpened
    | PrStateChanged
    | ChildSpawned
    | DesktopControlTaken
    | IdeFilesEdited
    | Notice
    | ContextCompacted
    | InstructionsLoaded
    | VerifyRan
    | RunResumed
    | ArtifactCreated
    | ErrorRaised,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

Emit = Callable[[Event], Awaitable[None]]
"""Where a worker's events go: the runner's `emit`, which publishes them on the bus."""


def for_prompt(emit: Emit, prompt_id: int | None, attempt: int) -> Emit:
    """`emit`, stamping every event with the prompt and the run attempt it belongs to."""

    async def stamped(event: Event) -> None:
        await emit(event.model_copy(update={"prompt_id": prompt_id, "attempt": attempt}))

    return stamped


def parse_event(data: str | bytes | dict[str, Any]) -> Event:
    """Parse an event from JSON text or a dict, whatever its type."""
    if isinstance(data, dict):
        return EVENT_ADAPTER.validate_python(data)
    return EVENT_ADAPTER.validate_json(data)
