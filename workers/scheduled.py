"""Scheduled jobs: the same functions under the in-process scheduler and under Celery.

The embedded default calls `run_job(ctx, name)` on its executor every interval; in distributed
mode beat enqueues the Celery task of the same name (`workers/celery_app.py`), whose body calls
the same `run_job` on a worker. The work itself is the images area's job functions
(`images/image_jobs.py`: builds are single-flight per repo across processes, an unchanged tip is
skipped) and, for pull requests, the control plane's reconciler, asked for through the port.

The warm pool is not on this schedule: pooled sandboxes belong to the process that holds them,
so each process (the embedded server, each worker) tops up its own on a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from images import image_jobs
from images.image_jobs import ImageJobs, UnknownRepo
from workers.control import ControlPlane
from workers.errors import JobError

FanOut = Callable[[str, str], Awaitable[None]]


@dataclass
class JobContext:
    control: ControlPlane
    image_jobs: ImageJobs
    fan_out: FanOut | None = None
    """Hand `(job, repo)` to another worker (Celery); None runs it here and now."""


@dataclass(frozen=True)
class Scheduled:
    job: str
    interval_s: float


def schedule(image_s: float, reconcile_s: float) -> list[Scheduled]:
    """What runs periodically, in both modes (an interval of 0 turns a job off)."""
    return [
        Scheduled("build_images", image_s),
        Scheduled("reconcile_github", reconcile_s),
    ]


async def build_image(
    ctx: JobContext, repo: str, force: bool = False, trigger: Any = "schedule"
) -> str:
    """Build one repo's image unless its base tip and spec are unchanged."""
    try:
        results = await image_jobs.build_images(
            ctx.image_jobs, [repo], force=force, trigger=trigger
        )
    except UnknownRepo as exc:
        raise JobError(str(exc)) from exc
    return "; ".join(f"{r.repo}: {r.outcome} ({r.message})" for r in results)


async def build_images(ctx: JobContext) -> str:
    """Check every repo's base tip; build where it moved (fanned out to workers if we can)."""
    if ctx.fan_out is None:
        results = await image_jobs.build_images(ctx.image_jobs)
        summary = [f"{r.repo}: {r.outcome}" for r in results]
    else:
        specs = await asyncio.to_thread(ctx.image_jobs.specs)
        for spec in specs:
            await ctx.fan_out("build_image", spec.name)
        summary = [f"{spec.name}: queued" for spec in specs]
    return "; ".join(summary) if summary else "no repositories registered"


async def maintain_pool(ctx: JobContext) -> str:
    """Expire, replace and top up this process's warm pool."""
    await image_jobs.maintain_pool(ctx.image_jobs)
    return "warm pool maintained"


async def reconcile_github(ctx: JobContext) -> str:
    """Catch pull-request changes whose webhooks were missed; the control plane does it."""
    return await ctx.control.run_job("reconcile_github")


JOBS: dict[str, Callable[..., Awaitable[str]]] = {
    "build_image": build_image,
    "build_images": build_images,
    "maintain_pool": maintain_pool,
    "reconcile_github": reconcile_github,
}


async def run_job(ctx: JobContext, name: str, *args: Any, **kwargs: Any) -> str:
    job = JOBS.get(name)
    if job is None:
        raise JobError(f"unknown job {name!r}; known: {', '.join(JOBS)}")
    return await job(ctx, *args, **kwargs)
