"""A session's sandbox while its runner holds it: acquired once, brought to the base tip in the
background, snapshotted and terminated when the runner lets go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from images.provider import SandboxProvider
from images.sandboxes.base import SandboxError
from images.spec import RepoSpec
from images.starter import Acquired
from integrations.forge.base import ForgeError
from workers.control import PromptJob, SessionContext
from workers.events import (
    Event,
    Notice,
    SandboxReady,
    SnapshotTaken,
    StatusChanged,
    SyncDone,
    for_prompt,
)

log = logging.getLogger("nightshift.runner")
SYNC_TIMEOUT_S = 600.0


class SessionSandbox:
    """The sandbox of one runner's session, from acquire to release."""

    def __init__(
        self,
        session_id: str,
        provider: SandboxProvider,
        emit: Callable[[Event], Awaitable[None]],
        checkpoint_every_s: float = 0.0,
    ) -> None:
        self.session_id = session_id
        self.checkpoint_every_s = checkpoint_every_s
        self._checkpointed_at: float | None = None
        self.provider = provider
        self.emit = emit
        self.acquired: Acquired | None = None
        self.base_sha = ""
        self.sync_done = asyncio.Event()
        """Set while the workspace is at the base tip (or no sync is due); writes wait on it."""
        self.sync_done.set()
        self._sync: asyncio.Task[None] | None = None
        self._sync_due: tuple[Acquired, PromptJob] | None = None

    async def ensure(self, job: PromptJob, ctx: SessionContext) -> Acquired:
        """The session's sandbox: the one already held, or one acquired for `job` now."""
        if self.acquired is not None:
            return self.acquired
        emit = for_prompt(self.emit, job.id, job.attempt)
        await emit(StatusChanged(status="starting"))
        acquired = await self.provider.acquire(
            ctx.repo,
            snapshot=ctx.snapshot,
            label=self.session_id,
            claimant=str(job.author.id),
        )
        self.acquired = acquired
        self.base_sha = acquired.base_sha
        if acquired.mode != "snapshot":
            # A follow-up keeps the base it started from; every fresh sandbox catches up with
            # the base tip in the background while the agent reads (see `start_sync`).
            self.sync_done.clear()
            self._sync_due = (acquired, job)
        await emit(
            SandboxReady(
                mode=acquired.mode,
                sandbox_id=acquired.sandbox.id,
                image=acquired.image.id,
                ms_since_prompt=int((time.time() - job.created_at) * 1000),
            )
        )
        for note in acquired.notes:
            await emit(Notice(message=note))
        return acquired

    def start_sync(self, repo: RepoSpec) -> None:
        """Start the due catch-up with the tip of `repo`'s base, if one is due."""
        if self._sync_due is not None:
            acquired, job = self._sync_due
            self._sync_due = None
            self._sync = asyncio.create_task(self._sync_to_tip(acquired, job, repo))

    async def synced(self, repo: RepoSpec) -> None:
        """Start the due sync now if the model has not started it, and wait for it to end."""
        self.start_sync(repo)
        await self.sync_done.wait()

    async def _sync_to_tip(self, acquired: Acquired, job: PromptJob, repo: RepoSpec) -> None:
        started = time.monotonic()
        emit = for_prompt(self.emit, job.id, job.attempt)
        try:
            sha = await asyncio.wait_for(self.provider.sync(acquired, repo), SYNC_TIMEOUT_S)
            self.base_sha = sha
            await emit(SyncDone(sha=sha, ms=int((time.monotonic() - started) * 1000)))
        except (SandboxError, ForgeError, OSError, TimeoutError) as exc:
            log.warning("sync of %s failed: %s", self.session_id, exc)
            await emit(
                Notice(
                    message=f"could not bring the sandbox to the tip of {repo.base} "
                    f"({exc}); working on {acquired.base_sha[:10]}"
                )
            )
        finally:
            self.sync_done.set()

    async def checkpoint(self, job: PromptJob) -> None:
        """Snapshot the workspace mid-prompt: should this runner die, the prompt's next attempt
        starts from here (the session's snapshot is always its newest). At most one per
        `checkpoint_every_s` (NIGHTSHIFT_CHECKPOINT_SECONDS); the first always."""
        acquired = self.acquired
        if acquired is None:
            return
        last = self._checkpointed_at
        if last is not None and time.monotonic() - last < self.checkpoint_every_s:
            return
        self._checkpointed_at = time.monotonic()
        emit = for_prompt(self.emit, job.id, job.attempt)
        try:
            ref = await acquired.sandbox.snapshot()
        except (SandboxError, OSError) as exc:
            log.warning("checkpoint of %s failed: %s", acquired.sandbox.id, exc)
            await emit(Notice(message=f"could not save a checkpoint of the workspace: {exc}"))
            return
        await emit(SnapshotTaken(snapshot=ref))

    async def release(self, snapshot: bool) -> None:
        """Stop any sync, snapshot the sandbox if asked, and terminate it."""
        acquired, self.acquired = self.acquired, None
        if acquired is None:
            return
        self._checkpointed_at = None
        self._sync_due = None
        self.sync_done.set()
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
            self._sync = None
        try:
            if snapshot:
                ref = await acquired.sandbox.snapshot()
                await self.emit(SnapshotTaken(snapshot=ref))
        except (SandboxError, OSError) as exc:
            log.warning("snapshot of %s failed: %s", acquired.sandbox.id, exc)
        finally:
            await acquired.sandbox.terminate()
