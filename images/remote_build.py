"""Image builds on a backend whose images live with the provider (Modal).

The clone still happens on the host (credentials never leave it). The backend turns the
repository's declared environment (`image`, `dockerfile`, or its default base) plus the clone
into a provider image, the set-up and warm commands run in a build sandbox started from it,
and the sandbox's filesystem snapshot is the repo's image: its provider id (`im-...`) is what
the image record's `location` holds, and sessions, the warm pool and follow-ups start from it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from images.layers import remove_tree
from images.registry import ImageRecord
from images.sandboxes.base import ImageRef, Limits, Sandbox, SandboxBackend, SandboxSpec
from images.setup import BuildLog, Progress, build_sandbox_spec, run_setup
from images.spec import RepoSpec


class BuildSandbox(Sandbox, Protocol):
    async def snapshot_image(self) -> str:
        """The sandbox's filesystem as a provider image that does not expire; its id."""
        ...


@runtime_checkable
class RemoteImages(Protocol):
    """A backend that builds the declared environment itself and keeps images remotely."""

    name: str

    def runtime_version(self) -> str: ...

    def declared_environment(self, spec: RepoSpec, workspace: Path) -> object:
        """The provider's image definition for `spec`'s environment with `workspace` in it."""
        ...

    async def cold_image(self, spec: RepoSpec, image_dir: Path, image_id: str) -> None:
        """Make the cold start image `image_id` (a bare clone in `image_dir`) run on `spec`'s
        declared environment on the provider."""
        ...

    async def start_build(self, environment: object, spec: SandboxSpec) -> BuildSandbox:
        """A sandbox on `environment`, the provider building it first."""
        ...


def remote_images(backend: SandboxBackend) -> RemoteImages | None:
    """`backend` when its images live with the provider, else None (a local backend)."""
    return backend if isinstance(backend, RemoteImages) else None


async def build_remote(
    backend: RemoteImages,
    record: ImageRecord,
    spec: RepoSpec,
    staging: Path,
    limits: Limits,
    command_timeout: float,
    build_log: BuildLog,
    say: Progress,
) -> str:
    """Build `spec`'s image from the clone in `staging` (`root/workspace`); returns the
    provider image id. The clone has served its purpose once uploaded, so it goes.

    `spec` is the effective spec (declared environment, set-up and warm steps).
    """
    source = ImageRef(
        id=record.id,
        repo=spec.name,
        sha=record.sha or "",
        backend=backend.name,
        location=str(staging),
        runtime=backend.runtime_version(),
        built_at=time.time(),
        spec_hash=record.spec_hash or "",
    )
    try:
        return await _build(
            backend,
            spec,
            staging / "root" / "workspace",
            source,
            limits,
            command_timeout,
            build_log,
            say,
        )
    finally:
        await asyncio.to_thread(remove_tree, staging)


async def _build(
    backend: RemoteImages,
    spec: RepoSpec,
    workspace: Path,
    source: ImageRef,
    limits: Limits,
    command_timeout: float,
    build_log: BuildLog,
    say: Progress,
) -> str:
    say(f"building the environment on {backend.name}")
    environment = backend.declared_environment(spec, workspace)
    sandbox = await backend.start_build(
        environment, build_sandbox_spec(spec, source, limits, command_timeout)
    )
    try:
        await run_setup(sandbox, spec, command_timeout, build_log, say)
        say("snapshotting the build sandbox")
        image_id = await sandbox.snapshot_image()
    finally:
        await sandbox.terminate()
    build_log.line(f"{backend.name} image {image_id}")
    return image_id
