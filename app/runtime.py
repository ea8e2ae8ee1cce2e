"""Wiring: build every service of one Nightshift process from its settings.

`serve`, `run` and the tests all start from `build_runtime(settings)`; nothing happens at
import time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import SQLModel

from app.control import LocalControlPlane
from app.db import control_engine
from app.metrics import observe
from app.models import CONTROL_TABLES
from app.services.github import GitHubServices, RebuildHook, build_github
from app.services.github_accounts import GitHubAccounts, build_accounts
from app.services.github_events import reconcile_github
from app.services.hub import EventHub
from app.services.images import Images
from app.services.presence import Presence
from app.services.pulls import LocalPullRequests
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.services.users import Users
from app.services.websessions import WebSessions
from app.sessionstore import SessionFiles
from app.settings import Settings
from images.builder import ImageBuilder
from images.jobs import ImageJobs, build_images, maintain_pool
from images.mirror import Mirrors
from images.pool import WarmPool
from images.provider import SandboxProvider
from images.registry import ImageRegistry
from images.sandboxes import make_backend
from images.sandboxes.base import SandboxBackend
from images.sandboxes.overlay import release_stale_mounts
from images.spec import RepoSpec
from integrations.forge.base import Forge
from integrations.forge.local import LocalForge
from workers.bus import InProcessBus
from workers.dispatch import Dispatcher, InProcessDispatcher
from workers.executor import InProcessExecutor, every
from workers.redact import PLACEHOLDER, Redactor, install_log_redaction
from workers.runner import WorkerDeps

if TYPE_CHECKING:
    from app.services.slack import SlackBot

log = logging.getLogger("nightshift")
REAP_INTERVAL_S = 10.0
SNAPSHOT_GC_INTERVAL_S = 6 * 3600.0
GITHUB_RECONCILE_INTERVAL_S = 600.0


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    redactor: Redactor
    files: SessionFiles
    hub: EventHub
    users: Users
    repos: Repos
    sessions: Sessions
    pulls: LocalPullRequests
    backend: SandboxBackend
    images: ImageRegistry
    builder: ImageBuilder
    pool: WarmPool
    image_jobs: ImageJobs
    image_service: Images
    provider: SandboxProvider
    executor: InProcessExecutor
    deps: WorkerDeps
    dispatcher: Dispatcher
    forges: dict[str, Forge]
    web_sessions: WebSessions
    accounts: GitHubAccounts | None
    """People's linked GitHub accounts (None unless GitHub sign-in is configured)."""
    github: GitHubServices | None
    """The GitHub App's side: forge, PR opener, webhooks (None unless the App is configured)."""
    image_rebuild_hooks: list[RebuildHook]
    """Called with (repo spec, new base sha) when a push moves a repo's base branch; the image
    builder registers here to rebuild early."""
    presence: Presence = field(default_factory=Presence)
    """Who is viewing which session (web viewer); in memory, never persisted."""
    _periodic: list[concurrent.futures.Future[None]] = field(default_factory=list)
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    slack: SlackBot | None = None
    """The Slack bot, when SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET are set."""
    started: bool = False

    def forge_for(self, spec: RepoSpec) -> Forge:
        forge = self.forges.get(spec.forge)
        if forge is None:
            from integrations.forge.base import ForgeError

            raise ForgeError(f"the {spec.forge} forge is not configured on this server")
        return forge

    def start(self) -> None:
        """Recover sessions a previous process left behind and start periodic jobs."""
        self.executor.start()
        live = set(getattr(self.backend, "live", {}))
        released = release_stale_mounts(self.settings.data_dir / "sandboxes", live)
        if released:
            log.info("released %d sandbox mounts left by a previous process", released)
        self.periodic(REAP_INTERVAL_S, self._reap, "reaper")
        self.periodic(SNAPSHOT_GC_INTERVAL_S, self.collect_snapshots, "snapshot collection")
        if self.github is not None:
            self.periodic(
                GITHUB_RECONCILE_INTERVAL_S, lambda: reconcile_github(self), "github-reconciler"
            )
        self.started = True
        if self.settings.image_interval > 0:
            self.periodic(
                self.settings.image_interval,
                lambda: build_images(self.image_jobs),
                "image builds",
                on_loop=True,
            )
        self.periodic(
            self.settings.pool_interval,
            lambda: maintain_pool(self.image_jobs),
            "warm pool",
            on_loop=True,
        )
        for callback in self.on_start:
            callback()

    def periodic(
        self,
        interval: float,
        fn: Callable[[], object],
        name: str,
        *,
        on_loop: bool = False,
    ) -> None:
        """Run `fn` every `interval` seconds: in a thread, or (`on_loop`) on the worker loop,
        awaiting what it returns (for async jobs such as image builds)."""

        async def job() -> None:
            if on_loop:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            else:
                await asyncio.to_thread(fn)

        self._periodic.append(self.executor.submit(lambda: every(interval, job, name)))

    def collect_snapshots(self) -> list[str]:
        """Delete snapshots past NIGHTSHIFT_SNAPSHOT_MAX_AGE_DAYS, except those an active
        session will start its next prompt from (an old session's follow-up falls back to the
        newest image, with a notice)."""
        keep = self.sessions.active_snapshot_ids()
        older_than = self.settings.snapshot_max_age_days * 86400
        removed = self.backend.collect_snapshots(older_than, keep)
        if removed:
            log.info("collected %d old snapshot(s)", len(removed))
        return removed

    def _reap(self) -> None:
        dispatched = self.sessions.reap()
        if dispatched:
            log.info("resumed %d session(s): %s", len(dispatched), ", ".join(dispatched))

    def close(self) -> None:
        for future in self._periodic:
            future.cancel()
        if self.executor.pending() or self.started:
            # Pooled sandboxes hold overlay mounts: end them before the loop stops.
            with contextlib.suppress(Exception):
                self.executor.submit(self.pool.close).result(timeout=30)
        self.executor.shutdown()
        for callback in self.on_close:
            callback()
        self.files.close()
        self.engine.dispose()


def init_control_db(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine, tables=CONTROL_TABLES)


def build_runtime(settings: Settings, *, backend: SandboxBackend | None = None) -> Runtime:
    data_dir = settings.data_dir.resolve()
    settings = settings.model_copy(update={"data_dir": data_dir})
    data_dir.mkdir(parents=True, exist_ok=True)
    redactor = Redactor(settings.secret_values())
    install_log_redaction(redactor)
    engine = control_engine(settings.control_db_url)
    init_control_db(engine)

    def redact_secret(secret: str) -> None:
        # Shapes the patterns already catch need no literal entry (the set would only grow).
        if redactor.text(secret) != PLACEHOLDER:
            redactor.add([secret])

    files = SessionFiles(data_dir / "sessions", redactor)
    hub = EventHub(files)
    hub.handlers.append(observe)
    users = Users(engine)
    repos = Repos(engine, github_enabled=settings.github_enabled)
    sessions = Sessions(
        engine,
        files,
        hub,
        repos,
        users,
        base_url=settings.base_url,
        max_prompt_chars=settings.max_prompt_chars,
    )
    pulls = LocalPullRequests(engine, settings.base_url)
    sessions.openers["local"] = pulls
    backend = backend or make_backend(settings.sandbox, data_dir, settings.sandbox_config())
    owner = getattr(backend, "owner", None)
    forges: dict[str, Forge] = {"local": LocalForge()}
    accounts = build_accounts(settings, engine, redact_secret)
    rebuild_hooks: list[RebuildHook] = []
    github = build_github(
        settings,
        engine=engine,
        sessions=sessions,
        accounts=accounts,
        on_secret=redact_secret,
        submit=lambda fn: runtime.executor.submit(lambda: asyncio.to_thread(fn)),
        rebuild_hooks=rebuild_hooks,
        data_dir=data_dir,
    )
    if github is not None:
        forges["github"] = github.forge
        sessions.openers["github"] = github.opener
        repos.github_default_branch = github.default_branch

    def forge_for(spec: RepoSpec) -> Forge:
        return runtime.forge_for(spec)

    executor = InProcessExecutor()
    registry = ImageRegistry(engine, backend.name, backend.runtime_version())
    mirrors = Mirrors(data_dir / "mirrors")
    builder = ImageBuilder(
        registry,
        backend,
        data_dir / "images",
        mirrors,
        forge_for,
        settings.limits(),
        owner,
        command_timeout=settings.image_command_timeout,
    )
    provider = SandboxProvider(
        backend,
        registry,
        builder,
        mirrors,
        forge_for,
        settings.limits(),
        setup_timeout=settings.image_command_timeout,
    )
    pool = WarmPool(
        provider.prepare_warm,
        lambda factory: _spawn(executor, factory),
        lambda spec: _newest_image_id(provider, spec),
        pool_ttl=settings.pool_ttl,
        warm_ttl=settings.warm_ttl,
        debounce=settings.warm_debounce,
    )
    provider.pool = pool
    image_service = Images(engine, repos, registry, pool, executor)
    image_jobs = ImageJobs(
        builder=builder,
        provider=provider,
        registry=registry,
        specs=image_service.specs,
        snapshot_images=image_service.snapshot_images,
        keep=settings.images_keep,
    )
    image_service.jobs = image_jobs
    repos.validators.append(image_service.validate_spec_file)

    def image_landed(spec: RepoSpec, _record: object) -> None:
        if runtime.started:
            pool.image_landed(spec)

    builder.on_built.append(image_landed)

    def repo_added(repo: object) -> None:
        if runtime.started:
            image_service.queue_build([getattr(repo, "name", "")], trigger="added")

    repos.on_added.append(repo_added)

    def pushed(spec: RepoSpec, _sha: str) -> None:
        # A push to the base branch (GitHub webhook) rebuilds now rather than at the next run.
        image_service.queue_build([spec.name], trigger="push")

    rebuild_hooks.append(pushed)
    deps = WorkerDeps(
        control=LocalControlPlane(sessions),
        bus=InProcessBus(hub.publish),
        sandboxes=provider,
        forge_for=forge_for,
        config=settings.agent_config(),
        redactor=redactor,
    )
    dispatcher = InProcessDispatcher(executor, deps)
    sessions.dispatcher = dispatcher
    runtime = Runtime(
        settings=settings,
        engine=engine,
        redactor=redactor,
        files=files,
        hub=hub,
        users=users,
        repos=repos,
        sessions=sessions,
        pulls=pulls,
        backend=backend,
        images=registry,
        builder=builder,
        pool=pool,
        image_jobs=image_jobs,
        image_service=image_service,
        provider=provider,
        executor=executor,
        deps=deps,
        dispatcher=dispatcher,
        forges=forges,
        web_sessions=WebSessions(engine),
        accounts=accounts,
        github=github,
        image_rebuild_hooks=rebuild_hooks,
    )
    # ---- Slack
    if settings.slack_enabled:
        from app.services.slack import build_slack_bot

        runtime.slack = build_slack_bot(runtime)
    return runtime


def _spawn(executor: InProcessExecutor, factory: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await factory()

    executor.submit(run)


def _newest_image_id(provider: SandboxProvider, spec: RepoSpec) -> str | None:
    record = provider.usable_image(spec)
    return record.id if record is not None else None
