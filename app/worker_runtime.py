"""The composition root of one `nightshift worker` process (distributed mode); the start-up
it shares with the API is `app/wiring.py`."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from app.services.github.app import github_app
from app.services.repo_catalog import RepoCatalog
from app.services.runners import active_snapshot_ids
from app.settings import Settings
from app.wiring import (
    SNAPSHOT_GC_INTERVAL_S,
    STALE_SWEEP_INTERVAL_S,
    collect_snapshots,
    distributed_checks,
    forge_finder,
    image_stack,
    make_forges,
    release_left_mounts,
    release_stale_sandboxes,
    resolved,
    secrets_and_control_db,
)
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
    # Workers clone and push GitHub repositories themselves, with installation tokens minted
    # here (redacted like every secret); PRs are opened by the API.
    forges = make_forges(settings, github_app(settings, redactor.learn))
    forge_for = forge_finder(forges, "worker")
    state_dir = settings.data_dir / "workers" / re.sub(r"[^A-Za-z0-9._-]+", "_", node)
    executor = InProcessExecutor("nightshift-celery-worker")
    stack = image_stack(
        settings,
        engine,
        RepoCatalog(engine),
        state_dir,
        forge_for,
        executor,
        refresh_pool=lambda: True,
    )
    release_left_mounts(state_dir, set(), f"a previous worker {node}")
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

    def collect_old_snapshots() -> object:
        # Snapshots of local backends live on the worker that took them: it collects them.
        return collect_snapshots(
            stack.backend, settings.snapshot_max_age_days, active_snapshot_ids(engine)
        )

    return WorkerContext(
        deps,
        stack.jobs,
        stack.pool,
        executor,
        settings.broker_url,
        celery,
        pool_interval=settings.pool_interval,
        housekeeping=[
            ("snapshot collection", SNAPSHOT_GC_INTERVAL_S, collect_old_snapshots),
            ("stale sweep", STALE_SWEEP_INTERVAL_S, lambda: release_stale_sandboxes(stack.backend)),
        ],
        on_close=[engine.dispose],
    )
