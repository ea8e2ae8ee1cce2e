"""Start-up that both kinds of process share: the control DB, forges, the GitHub App, the
image stack, and the clean-up of what an earlier process left behind.

This module, `app/runtime.py` (`build_runtime`, the API process) and `app/worker_runtime.py`
(`build_worker`, a `nightshift worker`) are the composition root: the only code that builds
services, each with its collaborators passed to its constructor. Nothing is assigned onto a
service once it is built. See "Composition root" in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import Engine

from app.db import control_engine, reader
from app.services.images import Images, repo_specs, snapshot_images
from app.services.repo_catalog import RepoCatalog
from app.settings import Settings
from images.builder import ImageBuilder
from images.image_jobs import ImageJobs
from images.mirror import Mirrors
from images.oci_store import OciStore
from images.pool import WarmPool
from images.provider import SandboxProvider
from images.registry import ImageRegistry, Trigger
from images.sandboxes import make_backend
from images.sandboxes.base import SandboxBackend
from images.sandboxes.overlay import release_stale_mounts
from images.spec import RepoSpec
from images.starter import ImageStarter
from integrations.forge.base import Forge, ForgeError
from integrations.forge.local import LocalForge
from integrations.github.app import GitHubApp
from integrations.github.forge import GitHubForge
from workers.executor import InProcessExecutor
from workers.redact import Redactor, install_log_redaction

log = logging.getLogger("nightshift")

SNAPSHOT_GC_INTERVAL_S = 6 * 3600.0
STALE_SWEEP_INTERVAL_S = 60.0
"""How often a process releases sandboxes (mounts, disks) that exited processes left behind."""


def release_stale_sandboxes(backend: SandboxBackend) -> int:
    """The local backends' sweep of dead processes' sandboxes; nothing for the others."""
    return backend.release_stale()


def secrets_and_control_db(settings: Settings) -> tuple[Redactor, Engine]:
    """What every process starts with: a redactor of its secrets, installed on every logger,
    and the control DB at the newest migration."""
    redactor = Redactor(settings.secret_values())
    install_log_redaction(redactor)
    engine = control_engine(settings.control_db_url)
    init_control_db(engine)
    return redactor, engine


def init_control_db(engine: Engine) -> None:
    """Bring the control DB to the newest migration (a no-op when it is there already)."""
    from app.migrate import upgrade

    upgrade(engine)


def make_forges(settings: Settings, github: GitHubApp | None) -> dict[str, Forge]:
    """The forges of a process: the local one, and GitHub's where the App is configured
    (a worker clones and pushes with installation tokens it mints itself)."""
    forges: dict[str, Forge] = {"local": LocalForge()}
    if github is not None:
        forges["github"] = GitHubForge(github, settings.data_dir / "github" / "mirrors")
    return forges


def forge_finder(forges: dict[str, Forge], where: str) -> Callable[[RepoSpec], Forge]:
    """`forge_for(spec)`: the forge of a repo, or a clear error naming `where` it is missing."""

    def forge_for(spec: RepoSpec) -> Forge:
        forge = forges.get(spec.forge)
        if forge is None:
            raise ForgeError(f"the {spec.forge} forge is not configured on this {where}")
        return forge

    return forge_for


def collect_snapshots(backend: SandboxBackend, max_age_days: float, keep: set[str]) -> list[str]:
    """Delete snapshots past NIGHTSHIFT_SNAPSHOT_MAX_AGE_DAYS, except `keep` (those an active
    session will start its next prompt from)."""
    removed = backend.collect_snapshots(max_age_days * 86400, keep)
    if removed:
        log.info("collected %d old snapshot(s)", len(removed))
    return removed


def release_left_mounts(state_dir: Path, live: set[str], left_by: str) -> int:
    """Unmount the sandboxes under `state_dir` that a process before this one left mounted."""
    released = release_stale_mounts(state_dir / "sandboxes", live)
    if released:
        log.info("released %d sandbox mounts left by %s", released, left_by)
    return released


@dataclass
class ImageStack:
    """Where a process's sandboxes come from: registry, builder, provider, warm pool."""

    backend: SandboxBackend
    registry: ImageRegistry
    builder: ImageBuilder
    provider: SandboxProvider
    pool: WarmPool
    service: Images
    jobs: ImageJobs


def image_stack(
    settings: Settings,
    engine: Engine,
    repos: RepoCatalog,
    state_dir: Path,
    forge_for: Callable[[RepoSpec], Forge],
    executor: InProcessExecutor,
    *,
    refresh_pool: Callable[[], bool],
    send: Callable[[str, bool, Trigger], None] | None = None,
    backend: SandboxBackend | None = None,
) -> ImageStack:
    """Built in this order: backend, registry, mirrors, builder, starter, warm pool, provider,
    image jobs, the Images service. A new image refreshes the pool when `refresh_pool()` says
    so; `send` hands builds to workers (distributed mode)."""
    data_dir = settings.data_dir
    backend = backend or make_backend(settings.sandbox, state_dir, settings.sandbox_config())
    registry = ImageRegistry(engine, backend.name, backend.runtime_version(), reads=reader(engine))
    mirrors = Mirrors(data_dir / "mirrors")

    def image_landed(spec: RepoSpec, _record: object) -> None:
        # The pool is built from the builder (through the starter), so it is named here, in
        # a call made only once a build finishes, long after this function has returned.
        if refresh_pool():
            pool.image_landed(spec)

    builder = ImageBuilder(
        registry,
        backend,
        data_dir / "images",
        mirrors,
        forge_for,
        settings.limits(),
        backend.owner,
        command_timeout=settings.image_command_timeout,
        oci=OciStore(
            data_dir / "rootfs", auth_file=settings.registry_auth, max_mb=settings.image_max_mb
        ),
        on_built=image_landed,
    )
    starter = ImageStarter(
        backend,
        registry,
        builder,
        mirrors,
        forge_for,
        settings.limits(),
        setup_timeout=settings.image_command_timeout,
    )
    pool = WarmPool(
        starter,
        lambda factory: _spawn(executor, factory),
        pool_ttl=settings.pool_ttl,
        warm_ttl=settings.warm_ttl,
        debounce=settings.warm_debounce,
    )
    provider = SandboxProvider(starter, pool)
    jobs = ImageJobs(
        builder=builder,
        provider=provider,
        registry=registry,
        specs=lambda: repo_specs(repos),
        snapshot_images=lambda: snapshot_images(engine),
        removed=lambda: [r.name for r in repos.list(removed=True) if r.removed_at is not None],
        keep=settings.images_keep,
    )
    service = Images(engine, repos, registry, pool, executor, jobs, send)
    return ImageStack(backend, registry, builder, provider, pool, service, jobs)


def distributed_checks(settings: Settings) -> None:
    if not settings.worker_token:
        raise ValueError(
            "NIGHTSHIFT_BROKER_URL is set (distributed mode), so workers call this API's "
            "internal routes: set NIGHTSHIFT_WORKER_TOKEN (a long random string, the same on "
            "the API and every worker)"
        )


def resolved(settings: Settings) -> Settings:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if data_dir.stat().st_mode & 0o077:
        # Sandboxes' files land here owned by the sandbox uid: no other local user may reach them.
        data_dir.chmod(0o700)
    return settings.model_copy(update={"data_dir": data_dir})


def _spawn(executor: InProcessExecutor, factory: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await factory()

    executor.submit(run)


def peer_secret(settings: Settings) -> str:
    """The key API processes sign forwarded requests with (several API processes)."""
    secret = settings.peer_secret or settings.worker_token
    if secret is None:
        raise ValueError(
            "NIGHTSHIFT_PEER_URL is set (several API processes), so they sign the requests "
            "they forward to each other: set NIGHTSHIFT_PEER_SECRET (a long random string, the "
            "same on every API process) or NIGHTSHIFT_WORKER_TOKEN"
        )
    return secret.get_secret_value()


def process_state_dir(settings: Settings) -> Path:
    """Where this API process keeps its sandboxes: the data dir; with several processes a
    directory of its own under it, named after its peer address, so a restart on the same
    address releases what the process before it left mounted."""
    if not settings.peer_url:
        return settings.data_dir
    parts = urlsplit(settings.peer_url)
    slot = re.sub(r"[^A-Za-z0-9.-]", "_", f"{parts.hostname}-{parts.port or 80}")
    return settings.data_dir / "processes" / slot
