"""`ImageStarter`: starts a sandbox from what the image registry holds, and brings it to the
base tip.

It starts from a session's snapshot, from the newest image built for the repo's current
spec, or cold (a clone with the set-up commands run in the sandbox, and an image build
queued). The warm pool (`images/pool.py`) starts its sandboxes here ahead of time; the
provider (`images/provider.py`) picks the fastest way for a session.

A sandbox may hold an older commit than the base tip: `sync` brings it up to date (host-side
fetch into a bare mirror, a bundle of the new commits copied in, fetch and fast-forward
inside the sandbox), while the agent already reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from images.builder import ImageBuilder
from images.cold import cold_clone
from images.mirror import Mirrors
from images.registry import SHARED_BACKENDS, ImageRecord, ImageRegistry, Trigger
from images.sandbox_git import sandbox_git
from images.sandboxes.base import (
    ImageRef,
    Limits,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxSpec,
    SnapshotRef,
    StartMode,
)
from images.setup import BuildError, BuildLog, exclude_setup_output, run_commands
from images.spec import RepoSpec
from integrations.forge.base import Forge

log = logging.getLogger("nightshift.starter")

SYNC_BUNDLE = ".git/nightshift-sync.bundle"


class SyncError(SandboxError):
    """Bringing a sandbox to the base tip failed; the message says at which step."""


class NoImage(SandboxError):
    """The repo has no image for its current spec yet (and a cold start was not allowed)."""


@dataclass
class Acquired:
    sandbox: Sandbox
    mode: StartMode
    image: ImageRef
    notes: list[str] = field(default_factory=list)
    spec: RepoSpec | None = None
    """The repo spec the sandbox runs with: the stored one completed by `.nightshift.toml`."""
    base_sha: str = ""
    """The base-branch commit the workspace stands on: the image's, or the tip a sync
    brought it to (for a snapshot, the commit the session's first prompt synced to)."""

    def __post_init__(self) -> None:
        if not self.base_sha:
            self.base_sha = self.image.sha


class ImageStarter:
    """Starts sandboxes from images, snapshots or a cold clone; knows which images are in use."""

    def __init__(
        self,
        backend: SandboxBackend,
        registry: ImageRegistry,
        builder: ImageBuilder,
        mirrors: Mirrors,
        forge_for: Callable[[RepoSpec], Forge],
        limits: Limits,
        *,
        setup_timeout: float = 1800.0,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.builder = builder
        self.mirrors = mirrors
        self.forge_for = forge_for
        self.limits = limits
        self.setup_timeout = setup_timeout
        self._pinned: dict[str, int] = {}
        self._background: set[asyncio.Task[object]] = set()

    def _sandbox_spec(
        self, repo: RepoSpec, source: ImageRef | SnapshotRef, label: str
    ) -> SandboxSpec:
        return SandboxSpec(
            source=source, limits=self.limits, env=repo.env, egress=repo.egress, label=label
        )

    async def start_snapshot(
        self, repo: RepoSpec, snapshot: SnapshotRef, label: str = ""
    ) -> Acquired:
        """A sandbox from a session's snapshot; `SnapshotUnusable` when it cannot be used."""
        record = await asyncio.to_thread(self.registry.get, snapshot.image.id)
        effective = record.effective(repo) if record is not None else repo
        sandbox = await self.backend.start(self._sandbox_spec(effective, snapshot, label))
        # The session's work sits on the base commit its first prompt synced to.
        base = await sandbox.exec(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{repo.base}"],
            timeout=60,
        )
        sha = base.stdout.strip() if base.ok else ""
        return Acquired(sandbox, "snapshot", snapshot.image, spec=effective, base_sha=sha)

    async def start(self, repo: RepoSpec, *, cold_ok: bool, label: str = "") -> Acquired:
        """A sandbox from the newest image built for `repo`'s current spec, else a cold one."""
        for _ in range(3):
            record = await asyncio.to_thread(self.usable_image, repo)
            if record is None:
                break
            effective = record.effective(repo)
            self._pin(record.id)  # from here on the image collection spares it ...
            try:
                if not await asyncio.to_thread(self._still_ready, record.id):
                    continue  # ... but it was marked collected before: choose again
                sandbox = await self.backend.start(
                    self._sandbox_spec(effective, record.ref(), label)
                )
            finally:
                self._unpin(record.id)
            return Acquired(sandbox, "image", record.ref(), spec=effective)
        if not cold_ok:
            raise NoImage(f"{repo.name} has no image for its current spec yet")
        return await self._start_cold(repo, label)

    def usable_image(self, repo: RepoSpec) -> ImageRecord | None:
        """The newest ready image whose spec hash matches what the repo asks for today."""
        for record in self.registry.ready(repo.name):
            if record.spec_hash == record.effective(repo).image_hash():
                local = record.backend not in SHARED_BACKENDS
                if record.location and (not local or Path(record.location, "root").is_dir()):
                    return record
        return None

    def _still_ready(self, image_id: str) -> bool:
        record = self.registry.get(image_id)
        return record is not None and record.status == "ready"

    def newest_image_id(self, repo: RepoSpec) -> str | None:
        """The id of `usable_image`: pooled sandboxes of other images are replaced."""
        record = self.usable_image(repo)
        return record.id if record is not None else None

    async def _start_cold(self, repo: RepoSpec, label: str) -> Acquired:
        record, effective = await cold_clone(self.builder, repo)
        self.queue_build(repo, "session")
        self._pin(record.id)
        try:
            sandbox = await self.backend.start(self._sandbox_spec(effective, record.ref(), label))
        finally:
            self._unpin(record.id)
        acquired = Acquired(sandbox, "cold", record.ref(), spec=effective)
        try:
            await run_commands(sandbox, effective, ("setup",), self.setup_timeout, BuildLog())
            if effective.setup:
                await exclude_setup_output(sandbox)
        except BuildError as exc:
            acquired.notes.append(f"no image yet, so the set-up ran in this sandbox: {exc}")
        except BaseException:
            await sandbox.terminate()
            raise
        return acquired

    async def prepare_warm(self, repo: RepoSpec, cold_ok: bool) -> Acquired:
        """A sandbox for the warm pool: started, then brought to the base tip."""
        acquired = await self.start(repo, cold_ok=cold_ok, label=f"warm:{repo.name}")
        try:
            await self.sync(acquired, repo)
        except SandboxError as exc:
            acquired.notes.append(f"the warm-up fetch failed: {exc}")
        except BaseException:
            await acquired.sandbox.terminate()
            raise
        return acquired

    def queue_build(self, repo: RepoSpec, trigger: Trigger) -> None:
        """Build `repo`'s image in the background (single-flight; skipped when current)."""

        async def build() -> object:
            result = await self.builder.build(repo, trigger=trigger)
            log.info("queued image build of %s: %s (%s)", repo.name, result.outcome, result.message)
            return result

        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(build())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cancel_background(self) -> None:
        """Cancel queued builds and wait until they are gone (a process about to exit)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_background(self) -> None:
        """Wait for queued builds (the CLI and benchmarks, before they exit)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ------------------------------------------------------------ images in use

    def _pin(self, image_id: str) -> None:
        self._pinned[image_id] = self._pinned.get(image_id, 0) + 1

    def _unpin(self, image_id: str) -> None:
        left = self._pinned.get(image_id, 1) - 1
        if left > 0:
            self._pinned[image_id] = left
        else:
            self._pinned.pop(image_id, None)

    def images_in_use(self) -> set[str]:
        """Images that live sandboxes or starts in flight stand on."""
        used = set(self._pinned)
        for sandbox in list(self.backend.live.values()):
            source = sandbox.source
            if isinstance(source, SnapshotRef):
                used.add(source.image.id)
            elif isinstance(source, ImageRef):
                used.add(source.id)
        return used

    # ------------------------------------------------------------ the background sync

    async def sync(self, acquired: Acquired, repo: RepoSpec) -> str:
        """Bring the sandbox's workspace to the base tip; returns the commit it now holds.

        Host-side git runs only in the host-owned bare mirror; the sandbox gets a bundle of
        the new commits and fetches and fast-forwards itself.
        """
        tip = await self.mirrors.update(repo, self.forge_for(repo))
        if tip == acquired.base_sha:
            return tip
        with tempfile.TemporaryDirectory(prefix="nightshift-sync-") as tmp:
            bundle = Path(tmp) / "sync.bundle"
            if not await self.mirrors.bundle(repo, acquired.base_sha, bundle):
                return acquired.base_sha
            data = await asyncio.to_thread(bundle.read_bytes)
        sandbox = acquired.sandbox
        await sandbox.write_file(SYNC_BUNDLE, data)
        remote = f"refs/remotes/origin/{repo.base}"
        try:
            await _git(
                sandbox,
                "fetch",
                "--quiet",
                "--no-tags",
                SYNC_BUNDLE,
                f"+refs/heads/{repo.base}:{remote}",
            )
            merged = await sandbox.exec(
                ["git", "merge", "--ff-only", "--quiet", remote], timeout=300
            )
            if not merged.ok:
                # The base branch was rewritten: move to it, keeping any local change.
                await _git(sandbox, "reset", "--quiet", "--keep", remote)
            head = (await _git(sandbox, "rev-parse", "HEAD")).strip()
        finally:
            with contextlib.suppress(SandboxError):
                await sandbox.exec(["rm", "-f", SYNC_BUNDLE], timeout=30)
        if head != tip:
            raise SyncError(f"the workspace is at {head[:10]} after the sync, not at {tip[:10]}")
        acquired.base_sha = head
        return head


async def _git(sandbox: Sandbox, *args: str) -> str:
    return await sandbox_git(sandbox, *args, error=SyncError)
