"""The shapes of the image API: builds with their steps, size and environment, build
requests, and a person's warm sandbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BuildStep(BaseModel):
    command: str
    exit_code: int
    ms: int


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
    environment: str | None = None
    """`host`, `image <ref>` or `dockerfile <path>` (None: its repo is no longer registered)."""
    environment_digest: str | None = None
    """The manifest digest of the declared image it was built on (None: the host's tools, or
    a provider's build)."""
    size_bytes: int | None = None
    """The image's size on disk on its host (None: still building, failed, or kept by a
    provider, e.g. Modal, whose size is not known here)."""
    environment_size_bytes: int | None = None
    """The size of the declared image's unpacked root, shared by every image built on it."""
    steps: list[BuildStep] = []
    """Each set-up and warm command the build ran, with its exit code and time."""


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
