"""Where a session's sandbox comes from, fastest first.

1. its last snapshot (a follow-up prompt of the same session);
2. a warm sandbox from the pool: reserved for this caller by predictive warm-up, else shared;
3. the newest image of the repo (built at most `NIGHTSHIFT_IMAGE_INTERVAL` ago);
4. a cold clone with the set-up commands run in the sandbox, and an image build queued.

The starts themselves are the `ImageStarter`'s (`images/starter.py`), which the warm pool
uses too: construction runs starter -> pool -> provider. A sandbox from 2 to 4 may hold an
older commit than the base tip: `sync` brings it up to date in the background, while the
agent already reads.
"""

from __future__ import annotations

from images.pool import WarmPool
from images.sandboxes.base import SnapshotRef, SnapshotUnusable
from images.spec import RepoSpec
from images.starter import Acquired, ImageStarter


class SandboxProvider:
    def __init__(self, starter: ImageStarter, pool: WarmPool) -> None:
        self.starter = starter
        self.pool = pool

    async def acquire(
        self,
        repo: RepoSpec,
        *,
        snapshot: SnapshotRef | None = None,
        label: str = "",
        claimant: str | None = None,
    ) -> Acquired:
        """A running sandbox for `repo`, started the fastest way available (see the module)."""
        notes: list[str] = []
        if snapshot is not None:
            try:
                return await self.starter.start_snapshot(repo, snapshot, label)
            except SnapshotUnusable as exc:
                notes.append(f"{exc}; starting from the newest image")
        warm = await self.pool.claim(repo.name, claimant)
        if warm is not None:
            warm.mode = "warm"
            warm.notes = notes + warm.notes
            return warm
        acquired = await self.starter.start(repo, cold_ok=True, label=label)
        acquired.notes = notes + acquired.notes
        return acquired

    async def sync(self, acquired: Acquired, repo: RepoSpec) -> str:
        """Bring the sandbox's workspace to the base tip; returns the commit it now holds."""
        return await self.starter.sync(acquired, repo)

    def images_in_use(self) -> set[str]:
        """Images that live sandboxes, pooled sandboxes or starts in flight stand on."""
        return self.starter.images_in_use() | self.pool.image_ids()

    async def cancel_background(self) -> None:
        """Cancel the image builds cold starts queued (a process about to exit)."""
        await self.starter.cancel_background()

    async def wait_background(self) -> None:
        """Wait for the image builds cold starts queued (the CLI and benchmarks, before exit)."""
        await self.starter.wait_background()
