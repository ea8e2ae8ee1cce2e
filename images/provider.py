"""Where a session's sandbox comes from: its last snapshot, the newest image, or a fresh clone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from images.sandboxes.base import (
    ImageRef,
    Limits,
    Sandbox,
    SandboxBackend,
    SandboxSpec,
    SnapshotRef,
    SnapshotUnusable,
)
from images.spec import RepoSpec
from images.store import ImageStore
from integrations.forge.base import Forge

StartMode = Literal["warm", "image", "snapshot", "cold"]


@dataclass
class Acquired:
    sandbox: Sandbox
    mode: StartMode
    image: ImageRef
    notes: list[str] = field(default_factory=list)


class SandboxProvider:
    def __init__(
        self,
        backend: SandboxBackend,
        images: ImageStore,
        forge_for: Callable[[RepoSpec], Forge],
        limits: Limits,
    ) -> None:
        self.backend = backend
        self.images = images
        self.forge_for = forge_for
        self.limits = limits

    def _spec(self, repo: RepoSpec, source: ImageRef | SnapshotRef, label: str) -> SandboxSpec:
        return SandboxSpec(
            source=source, limits=self.limits, env=repo.env, egress=repo.egress, label=label
        )

    async def acquire(
        self, repo: RepoSpec, *, snapshot: SnapshotRef | None = None, label: str = ""
    ) -> Acquired:
        """A running sandbox for `repo`: from `snapshot` when usable, else the newest image."""
        notes: list[str] = []
        if snapshot is not None:
            try:
                sandbox = await self.backend.start(self._spec(repo, snapshot, label))
                return Acquired(sandbox, "snapshot", snapshot.image)
            except SnapshotUnusable as exc:
                notes.append(f"{exc}; starting from the newest image")
        image, built = await self.images.ensure(repo, self.forge_for(repo))
        sandbox = await self.backend.start(self._spec(repo, image, label))
        return Acquired(sandbox, "cold" if built else "image", image, notes)
