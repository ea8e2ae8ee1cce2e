"""Images and warm-up, app side: listing builds, warming a sandbox per person, and what the
image jobs need from the control DB (repo specs, images that snapshots stand on)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import Invalid, NotFound
from app.models import Repo, Session, User
from app.schemas import EffectiveField, RepoDetail, RepoListed, RepoPublic
from app.schemas_images import BuildStep, ImagePublic, WarmPublic
from app.services.repo_catalog import RepoCatalog, spec_of
from images.environments import build_steps, effective_origins
from images.image_jobs import ImageJobs, build_images
from images.pool import WarmInfo, WarmPool
from images.registry import ImageRecord, ImageRegistry, Trigger
from images.spec import RepoSpec, SpecFileError
from integrations.forge.base import ForgeError
from workers.executor import InProcessExecutor

log = logging.getLogger("nightshift.images")
T = TypeVar("T")
VALIDATE_TIMEOUT_S = 300.0


def image_public(record: ImageRecord, with_log: bool, spec: RepoSpec | None = None) -> ImagePublic:
    return ImagePublic(
        id=record.id,
        repo=record.repo,
        status=record.status,
        trigger=record.trigger,
        sha=record.sha,
        spec_hash=record.spec_hash,
        runtime=record.runtime,
        backend=record.backend,
        host=record.host,
        created_at=record.created_at,
        built_at=record.finished_at if record.status in ("ready", "collected") else None,
        duration_ms=record.duration_ms,
        error=record.error,
        log=record.log if with_log or record.status == "failed" else None,
        environment=record.effective(spec).environment() if spec is not None else None,
        environment_digest=record.environment_digest,
        size_bytes=record.size_bytes,
        environment_size_bytes=record.environment_size_bytes,
        steps=[BuildStep(command=c, exit_code=e, ms=ms) for c, e, ms in build_steps(record.log)],
    )


def warm_public(info: WarmInfo) -> WarmPublic:
    return WarmPublic(
        repo=info.repo,
        state=info.state,
        sandbox_id=info.sandbox_id if info.state == "warm" else None,
        expires_at=info.expires_at if info.state in ("warming", "warm") else None,
        error=info.error,
    )


def repo_specs(repos: RepoCatalog) -> list[RepoSpec]:
    """Every registered repo's spec (what the image jobs build)."""
    return [spec_of(r) for r in repos.list()]


def snapshot_images(engine: Engine) -> set[str]:
    """Images that stored session snapshots stand on: a follow-up may start from them."""
    with DB(engine) as db:
        rows = db.exec(select(Session.snapshot).where(col(Session.snapshot).is_not(None)))
        used = set()
        for snapshot in rows:
            image = (snapshot or {}).get("image") or {}
            if isinstance(image, dict) and image.get("id"):
                used.add(str(image["id"]))
        return used


class Images:
    def __init__(
        self,
        engine: Engine,
        repos: RepoCatalog,
        registry: ImageRegistry,
        pool: WarmPool,
        executor: InProcessExecutor,
        jobs: ImageJobs,
        send: Callable[[str, bool, Trigger], None] | None = None,
    ) -> None:
        self.engine = engine
        self.repos = repos
        self.registry = registry
        self.pool = pool
        self.executor = executor
        self.jobs = jobs
        self.send = send
        """Distributed mode: hands a repo's build to a worker (images live where sessions
        run) instead of building it in this process."""

    def _on_loop(self, factory: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Run async image work on the worker loop from a request or CLI thread."""
        self.executor.start()

        async def run() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.executor.loop).result(timeout)

    # ------------------------------------------------------------ for the image jobs

    def specs(self) -> list[RepoSpec]:
        return repo_specs(self.repos)

    def snapshot_images(self) -> set[str]:
        """Images that stored session snapshots stand on: a follow-up may start from them."""
        return snapshot_images(self.engine)

    def validate_spec_file(self, spec: RepoSpec) -> None:
        """Refuse a repo whose base branch is unreadable or whose `.nightshift.toml` is
        malformed (the line and the reason)."""
        mirrors, forge_for = self.jobs.builder.mirrors, self.jobs.builder.forge_for

        async def check() -> None:
            tip = await mirrors.update(spec, forge_for(spec))
            await mirrors.spec_file(spec, tip)

        try:
            self._on_loop(check, VALIDATE_TIMEOUT_S)
        except SpecFileError as exc:
            raise Invalid(f"{spec.name}: {exc}") from exc
        except ForgeError as exc:
            raise Invalid(f"{spec.name}: cannot read branch {spec.base!r}: {exc}") from exc

    # ------------------------------------------------------------ images

    def images(self, repo: str | None = None, limit: int = 100) -> list[ImagePublic]:
        if repo is not None:
            self.repos.get(repo, removed=True)  # a removed repo's builds stay readable
        specs = {spec.name: spec for spec in self.specs()}
        return [
            image_public(r, with_log=False, spec=specs.get(r.repo))
            for r in self.registry.history(repo, limit)
        ]

    def repo_detail(self, name: str) -> RepoDetail:
        """A repo with its effective spec, read from the files of its newest build attempt
        (a removed repo's too: its history stays readable)."""
        repo = self.repos.get(name, removed=True)
        spec = spec_of(repo)
        newest = self._newest_attempt(name)
        recorded = newest.file_spec if newest is not None else None
        ready = next(iter(self.registry.ready(name)), None)
        return RepoDetail(
            **self._listed(repo, newest).model_dump(),
            environment_digest=ready.environment_digest if ready is not None else None,
            effective=[
                EffectiveField(field=f, value=v, origin=o)
                for f, v, o in effective_origins(spec, recorded)
            ],
            effective_at=newest.sha if newest is not None else None,
        )

    def listed(self, removed: bool = False) -> list[RepoListed]:
        """The repos (`Repos.list`), each with the environment its newest build read."""
        return [
            self._listed(r, self._newest_attempt(r.name)) for r in self.repos.list(removed=removed)
        ]

    def _newest_attempt(self, name: str) -> ImageRecord | None:
        """The newest finished build attempt that read the repo's files."""
        history = self.registry.history(name, 20)
        return next((r for r in history if r.status != "building" and r.sha), None)

    @staticmethod
    def _listed(repo: Repo, newest: ImageRecord | None) -> RepoListed:
        spec = spec_of(repo)
        environment = newest.effective(spec).environment() if newest else spec.environment()
        return RepoListed(**RepoPublic.model_validate(repo).model_dump(), environment=environment)

    def get(self, image_id: str) -> ImagePublic:
        record = self.registry.get(image_id)
        if record is None:
            raise NotFound(f"no image {image_id!r}")
        specs = {spec.name: spec for spec in self.specs()}
        return image_public(record, with_log=True, spec=specs.get(record.repo))

    def queue_build(
        self, repos: list[str] | None, *, force: bool = False, trigger: Trigger = "manual"
    ) -> list[str]:
        """Build in the background; returns the repo names queued."""
        names = [r.name for r in self.repos.list()] if repos is None else repos
        for name in names:
            self.repos.get(name)
        if not names:
            return []
        if self.send is not None:
            for name in names:
                self.send(name, force, trigger)
            return names
        jobs = self.jobs

        async def build() -> None:
            for result in await build_images(jobs, names, force=force, trigger=trigger):
                log.info("image build of %s: %s (%s)", result.repo, result.outcome, result.message)

        self.executor.submit(build)
        return names

    # ------------------------------------------------------------ warm-up

    def warm(self, user: User, repo_name: str) -> WarmPublic:
        """Make sure a sandbox of `repo_name` is warm for `user`; returns at once."""
        spec = spec_of(self.repos.get(repo_name))
        assert user.id is not None
        return warm_public(self.pool.request_warm(spec, str(user.id)))

    def warm_state(self, user: User, repo_name: str) -> WarmPublic:
        repo = self.repos.get(repo_name)
        assert user.id is not None
        return warm_public(self.pool.status(repo.name, str(user.id)))
