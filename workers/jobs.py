"""Scheduled jobs: the same functions under the in-process scheduler and under Celery beat.

Each job is a plain coroutine taking a `JobContext` and ids. The embedded default calls them on
its executor every interval; in distributed mode beat enqueues the Celery task of the same name
(`workers/celery_app.py`), whose body calls the same function on a worker.

Jobs that change images run where sandboxes run (the worker); jobs that change sessions or the
index (`reconcile_github`) belong to the control plane and are asked of it through the port.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from images.spec import RepoSpec
from images.store import ImageStore
from integrations.forge.base import Forge
from workers.control import ControlPlane


class JobError(Exception):
    """A job could not run (unknown repo, a part missing from this build)."""


class Locks(Protocol):
    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take the named lock without waiting; yields whether we hold it."""
        ...


class LocalLocks:
    """Single-flight within one process."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)


FanOut = Callable[[str, str], Awaitable[None]]


@dataclass
class JobContext:
    control: ControlPlane
    images: ImageStore
    forge_for: Callable[[RepoSpec], Forge]
    locks: Locks = field(default_factory=LocalLocks)
    fan_out: FanOut | None = None
    """Hand `(job, id)` to another worker (Celery); None runs it here and now."""


@dataclass(frozen=True)
class Scheduled:
    job: str
    interval_s: float


def schedule(image_s: float, pool_s: float, reconcile_s: float) -> list[Scheduled]:
    """What runs periodically, in both modes."""
    return [
        Scheduled("build_images", image_s),
        Scheduled("maintain_pool", pool_s),
        Scheduled("reconcile_github", reconcile_s),
    ]


async def _spec(ctx: JobContext, repo: str) -> RepoSpec:
    for spec in await ctx.control.repo_specs():
        if spec.name == repo:
            return spec
    raise JobError(f"no repository named {repo!r} is registered")


async def build_image(ctx: JobContext, repo: str) -> str:
    """Build the image of a repo's base tip unless one exists; one build per repo at a time."""
    spec = await _spec(ctx, repo)
    async with ctx.locks.hold(f"image:{repo}") as held:
        if not held:
            return f"{repo}: an image build is already running; skipped"
        image, built = await ctx.images.ensure(spec, ctx.forge_for(spec))
    verb = "built" if built else "up to date:"
    return f"{repo}: {verb} {image.id} at {image.sha[:12]}"


async def build_images(ctx: JobContext) -> str:
    """Check every repo's base tip; build where it moved (fanned out to workers when we can)."""
    specs = await ctx.control.repo_specs()
    results = []
    for spec in specs:
        if ctx.fan_out is not None:
            await ctx.fan_out("build_image", spec.name)
            results.append(f"{spec.name}: queued")
        else:
            try:
                results.append(await build_image(ctx, spec.name))
            except Exception as exc:  # one broken repo must not starve the others
                results.append(f"{spec.name}: failed: {exc}")
    return "; ".join(results) if results else "no repositories registered"


async def reconcile_github(ctx: JobContext) -> str:
    """Catch pull-request changes whose webhooks were missed; the control plane does it."""
    return await ctx.control.run_job("reconcile_github")


JOBS: dict[str, Callable[..., Awaitable[str]]] = {
    "build_image": build_image,
    "build_images": build_images,
    "reconcile_github": reconcile_github,
}
MISSING: dict[str, str] = {
    "maintain_pool": (
        "warm-pool upkeep is not part of this build (images/pool.py has not landed); "
        "sessions start from the newest image instead"
    ),
}
"""Scheduled jobs whose implementation is not in this build, with the reason."""


class JobUnavailable(JobError):
    """The job is not part of this build."""


async def run_job(ctx: JobContext, name: str, *args: str) -> str:
    job = JOBS.get(name)
    if job is None:
        raise JobUnavailable(MISSING.get(name) or f"unknown job {name!r}; known: {', '.join(JOBS)}")
    return await job(ctx, *args)
