"""Pieces both kinds of process are built from: the control DB, forges and the image stack.

`app/runtime.py` builds the API process (`build_runtime`), `app/worker_runtime.py` a
`nightshift worker` (`build_worker`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from app.db import control_engine
from app.services.images import Images
from app.services.repos import Repos
from app.settings import Settings
from images.builder import ImageBuilder
from images.image_jobs import ImageJobs
from images.mirror import Mirrors
from images.oci_store import OciStore
from images.pool import WarmPool
from images.provider import SandboxProvider
from images.registry import ImageRegistry
from images.sandboxes import make_backend
from images.sandboxes.base import SandboxBackend
from images.spec import RepoSpec
from images.starter import ImageStarter
from integrations.forge.base import Forge
from integrations.forge.local import LocalForge
from workers.executor import InProcessExecutor
from workers.redact import Redactor, install_log_redaction

if TYPE_CHECKING:
    pass


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


def make_forges(settings: Settings) -> dict[str, Forge]:
    """The forges every process has; GitHub's is added where the App is configured."""
    return {"local": LocalForge()}


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
    repos: Repos,
    state_dir: Path,
    forge_for: Callable[[RepoSpec], Forge],
    executor: InProcessExecutor,
    backend: SandboxBackend | None = None,
) -> ImageStack:
    data_dir = settings.data_dir
    backend = backend or make_backend(settings.sandbox, state_dir, settings.sandbox_config())
    registry = ImageRegistry(engine, backend.name, backend.runtime_version())
    mirrors = Mirrors(data_dir / "mirrors")
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
    service = Images(engine, repos, registry, pool, executor)
    jobs = ImageJobs(
        builder=builder,
        provider=provider,
        registry=registry,
        specs=service.specs,
        snapshot_images=service.snapshot_images,
        keep=settings.images_keep,
    )
    service.jobs = jobs
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
