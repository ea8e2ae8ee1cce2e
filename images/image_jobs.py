"""The periodic image jobs, as plain functions any scheduler can call.

The embedded default runs them from the in-process scheduler (`app/runtime.py`); in
distributed mode Celery beat calls the same functions from a task, on the worker process's
runtime loop (where its sandboxes and locks live), e.g.

    @celery.task
    def build_images_task(repos: list[str] | None = None, force: bool = False) -> None:
        runtime = worker_runtime()            # built once per worker process
        runtime.executor.submit(
            lambda: build_images(runtime.image_jobs, repos, force=force)
        ).result()

Every function takes the process's `ImageJobs` (its builder, provider, registry and a way to
list the registered repos) and nothing else but names and flags, so a task payload stays a
list of repo names. Builds are single-flight across processes (a lease row per repo in the
control DB): two schedulers calling `build_images` at once build each repo and tip once.

`maintain_pool` looks after the warm pool of the process it runs in (pooled sandboxes are
local to it), so each worker process runs it on its own timer rather than from beat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from images.builder import BuildResult, ImageBuilder
from images.errors import ImagesError
from images.provider import SandboxProvider
from images.registry import ImageRegistry, Trigger
from images.spec import RepoSpec

log = logging.getLogger("nightshift.images")

RepoProgress = Callable[[str, str], None]
"""Called with (repo name, what the build is doing now)."""


class UnknownRepo(ImagesError, ValueError):
    """A repo name that is not registered."""


@dataclass
class ImageJobs:
    builder: ImageBuilder
    provider: SandboxProvider
    registry: ImageRegistry
    specs: Callable[[], list[RepoSpec]]
    """Every registered repo's spec, read fresh from the control DB."""
    snapshot_images: Callable[[], set[str]] = set
    """Ids of images that stored session snapshots stand on (never collected)."""
    removed: Callable[[], list[str]] = list
    """Names of the repos that were removed (their images are all collected once unused).
    Read from the control DB, not inferred: a repo registered while a build ran is not in
    the specs that build read, and its images are not a removed repo's."""
    keep: int = 3
    """Ready images kept per registered repo (at least 1); older ones are collected once
    nothing uses them."""


def _select(specs: list[RepoSpec], repos: Sequence[str] | None) -> list[RepoSpec]:
    if repos is None:
        return specs
    by_name = {s.name: s for s in specs}
    missing = [name for name in repos if name not in by_name]
    if missing:
        known = ", ".join(sorted(by_name)) or "none yet"
        raise UnknownRepo(f"unknown repo {', '.join(map(repr, missing))} (registered: {known})")
    return [by_name[name] for name in repos]


async def build_images(
    jobs: ImageJobs,
    repos: Sequence[str] | None = None,
    *,
    force: bool = False,
    trigger: Trigger = "schedule",
    progress: RepoProgress | None = None,
) -> list[BuildResult]:
    """Build the image of every repo (or of `repos`) whose base tip or spec moved.

    An unchanged repo is skipped after one fetch; a repo another process is building is
    reported `busy`; a failed build keeps the previous image and records its log. Old
    images nothing uses are collected afterwards, and every image of a repo no longer
    registered (removed) that nothing uses.
    """
    specs = await asyncio.to_thread(jobs.specs)
    results = []
    for spec in _select(specs, repos):
        say = (lambda message, name=spec.name: progress(name, message)) if progress else None
        try:
            result = await jobs.builder.build(spec, trigger=trigger, force=force, progress=say)
        except Exception as exc:  # one repo's trouble must not stop the others
            log.exception("building the image of %s failed", spec.name)
            result = BuildResult(spec.name, "failed", f"internal error: {exc}")
        results.append(result)
    removed = await asyncio.to_thread(jobs.removed)
    await collect_images(jobs, [r.repo for r in results], removed=removed)
    return results


async def collect_images(
    jobs: ImageJobs, repos: Sequence[str] | None = None, removed: Sequence[str] = ()
) -> list[str]:
    """Delete images beyond the newest `keep` per repo, and all of each `removed` repo's,
    that no sandbox or snapshot uses (registering a removed repo again builds it anew)."""
    stored = await asyncio.to_thread(jobs.snapshot_images)

    def in_use() -> set[str]:  # asked again before each deletion: starts take images meanwhile
        return jobs.provider.images_in_use() | stored

    names = list(repos) if repos is not None else await asyncio.to_thread(jobs.registry.repos)
    collected: list[str] = []
    for name in names:
        collected += await jobs.builder.collect(name, max(jobs.keep, 1), in_use)
    for name in removed:
        collected += await jobs.builder.collect(name, 0, in_use)
    if collected:
        log.info("collected %d old image(s): %s", len(collected), ", ".join(collected))
    return collected


async def maintain_pool(jobs: ImageJobs) -> None:
    """Expire, replace (new image) and top up this process's warm pool for every repo."""
    await jobs.provider.pool.maintain(await asyncio.to_thread(jobs.specs))
