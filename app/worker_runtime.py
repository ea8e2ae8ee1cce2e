"""The runtime of one `nightshift worker` process (distributed mode)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from app.services.repos import Repos
from app.services.runners import active_snapshot_ids
from app.settings import Settings
from app.wiring import (
    SNAPSHOT_GC_INTERVAL_S,
    STALE_SWEEP_INTERVAL_S,
    distributed_checks,
    image_stack,
    make_forges,
    release_stale_sandboxes,
    resolved,
    secrets_and_control_db,
)
from images.sandboxes.overlay import release_stale_mounts
from images.spec import RepoSpec
from integrations.forge.base import Forge
from workers.executor import InProcessExecutor
from workers.runner import WorkerDeps

if TYPE_CHECKING:
    from workers.celery_app import WorkerContext


log = logging.getLogger("nightshift")


def build_worker(settings: Settings, *, node: str = "worker") -> WorkerContext:
    """One `nightshift worker` process.

    Runners reach the control plane over HTTP and publish events on Redis; they never open a
    session file. The worker reads and writes the image registry and its build leases in the
    control DB (images are built and kept where sessions run), so it needs the API's
    NIGHTSHIFT_DATABASE_URL. Its sandboxes live under `<data dir>/workers/<node>` (a restarted
    worker of the same name releases what its predecessor left mounted); the workers of a host
    share its images and repository mirrors.
    """
    from workers.bus import RedisStreamBus
    from workers.celery_app import WorkerContext, make_celery
    from workers.control_http import HttpControlPlane
    from workers.wire import CeleryConfig

    settings = resolved(settings)
    if not settings.broker_url:
        raise ValueError("a worker needs NIGHTSHIFT_BROKER_URL (the Redis that Celery uses)")
    distributed_checks(settings)
    assert settings.worker_token is not None
    if not settings.database_url:
        log.warning(
            "NIGHTSHIFT_DATABASE_URL is not set: this worker keeps its image registry in its "
            "own SQLite file; point it at the API's PostgreSQL so images are shared"
        )
    redactor, engine = secrets_and_control_db(settings)
    forges = make_forges(settings)
    if settings.github_enabled:
        # Workers clone and push GitHub repositories themselves, with installation tokens
        # minted here (redacted like every secret); PRs are opened by the API.
        from app.services.github.app import github_config
        from integrations.github.app import GitHubApp
        from integrations.github.forge import GitHubForge

        assert settings.github_app_id is not None
        app = GitHubApp(
            github_config(settings),
            settings.github_app_id,
            settings.github_private_key(),
            on_token=redactor.learn,
        )
        forges["github"] = GitHubForge(app, settings.data_dir / "github" / "mirrors")

    def forge_for(spec: RepoSpec) -> Forge:
        forge = forges.get(spec.forge)
        if forge is None:
            from integrations.forge.base import ForgeError

            raise ForgeError(f"the {spec.forge} forge is not configured on this worker")
        return forge

    state_dir = settings.data_dir / "workers" / re.sub(r"[^A-Za-z0-9._-]+", "_", node)
    executor = InProcessExecutor("nightshift-celery-worker")
    repos = Repos(engine, github_enabled=settings.github_enabled)
    stack = image_stack(settings, engine, repos, state_dir, forge_for, executor)
    stack.builder.on_built.append(lambda spec, _record: stack.pool.image_landed(spec))
    released = release_stale_mounts(state_dir / "sandboxes", set())
    if released:
        log.info("released %d sandbox mounts left by a previous worker %s", released, node)
    control = HttpControlPlane(
        settings.worker_control_url, settings.worker_token.get_secret_value()
    )
    deps = WorkerDeps(
        control=control,
        bus=RedisStreamBus(settings.broker_url),
        sandboxes=stack.provider,
        forge_for=forge_for,
        config=settings.agent_config(),
        redactor=redactor,
    )
    celery = make_celery(CeleryConfig(settings.broker_url, settings.visibility_timeout))

    def collect_snapshots() -> object:
        # Snapshots of local backends live on the worker that took them: it collects them.
        older_than = settings.snapshot_max_age_days * 86400
        return stack.backend.collect_snapshots(older_than, active_snapshot_ids(engine))

    return WorkerContext(
        deps,
        stack.jobs,
        stack.pool,
        executor,
        settings.broker_url,
        celery,
        pool_interval=settings.pool_interval,
        housekeeping=[
            ("snapshot collection", SNAPSHOT_GC_INTERVAL_S, collect_snapshots),
            ("stale sweep", STALE_SWEEP_INTERVAL_S, lambda: release_stale_sandboxes(stack.backend)),
        ],
        on_close=[engine.dispose],
    )
