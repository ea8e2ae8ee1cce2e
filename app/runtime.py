"""Wiring: build every service of one Nightshift process from its settings.

`serve`, `run` and the tests all start from `build_runtime(settings)`; `nightshift worker`
from `build_worker(settings)` (`app/worker_runtime.py`). Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from app.control_jobs import ControlJobs
from app.local_control import LocalControlPlane
from app.metrics import observe
from app.services.github.accounts import GitHubAccounts, build_accounts
from app.services.github.app import GitHubServices, RebuildHook, build_github, reconcile_github
from app.services.hub import EventHub
from app.services.images import Images
from app.services.model_choices import ModelChoices
from app.services.presence import Presence
from app.services.pull_requests import LocalPullRequests, PullRequests
from app.services.repos import Repos
from app.services.runners import RunnerService
from app.services.sessions import Sessions
from app.services.stream_slots import StreamSlots
from app.services.users import Users
from app.services.websessions import WebSessions
from app.sessionstore import SessionFiles
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
from images.builder import ImageBuilder
from images.image_jobs import ImageJobs, maintain_pool
from images.pool import WarmPool
from images.provider import SandboxProvider
from images.registry import ImageRegistry
from images.sandboxes.base import SandboxBackend
from images.sandboxes.overlay import release_stale_mounts
from images.spec import RepoSpec
from integrations.forge.base import Forge
from workers.bus import InProcessBus
from workers.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher
from workers.errors import ControlPlaneError, JobError
from workers.executor import InProcessExecutor, every
from workers.redact import Redactor
from workers.runner import WorkerDeps
from workers.scheduled import JobContext, run_job, schedule

if TYPE_CHECKING:
    from app.services.slack.bot import SlackBot
    from app.services.streams import StreamConsumer

log = logging.getLogger("nightshift")


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
    runners: RunnerService
    """The runner-facing side of sessions (leases, queue, recovery)."""
    pull_requests: PullRequests
    local_pulls: LocalPullRequests
    """The local forge's PR records."""
    backend: SandboxBackend
    image_registry: ImageRegistry
    builder: ImageBuilder
    pool: WarmPool
    image_jobs: ImageJobs
    images: Images
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
    control_jobs: ControlJobs
    """Jobs that change sessions or the index, run here (workers ask for them over HTTP)."""
    jobs: JobContext
    stream_slots: StreamSlots
    """Event streams each person holds open here (NIGHTSHIFT_MAX_STREAMS_PER_USER)."""
    streams: StreamConsumer | None = None
    """Distributed mode: persists the events workers publish on Redis streams."""
    presence: Presence = field(default_factory=Presence)
    """Who is viewing which session (web viewer); in memory, never persisted."""
    _periodic: list[concurrent.futures.Future[None]] = field(default_factory=list)
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    slack: SlackBot | None = None
    """The Slack bot, when SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN) are set."""
    started: bool = False
    started_at: float = 0.0

    @property
    def distributed(self) -> bool:
        return self.settings.broker_url is not None

    def forge_for(self, spec: RepoSpec) -> Forge:
        forge = self.forges.get(spec.forge)
        if forge is None:
            from integrations.forge.base import ForgeError

            raise ForgeError(f"the {spec.forge} forge is not configured on this server")
        return forge

    def start(self) -> None:
        """Recover sessions a previous process left behind and start periodic jobs.

        The reaper runs here, in the process that owns the session files, in both modes. In
        distributed mode this process also consumes the event streams, while beat schedules
        image builds and PR reconciliation and each worker looks after its own warm pool.
        """
        self.executor.start()
        self.started_at = time.time()
        live = set(self.backend.live)
        released = release_stale_mounts(self.settings.data_dir / "sandboxes", live)
        if released:
            log.info("released %d sandbox mounts left by a previous process", released)
        if self.streams is not None:
            self.streams.start()
        self.periodic(self.settings.reap_interval, self._reap, "reaper")
        self.periodic(SNAPSHOT_GC_INTERVAL_S, self.collect_snapshots, "snapshot collection")
        self.periodic(
            STALE_SWEEP_INTERVAL_S, lambda: release_stale_sandboxes(self.backend), "stale sweep"
        )
        self.started = True
        if not self.distributed:
            self._schedule_jobs()
            self.periodic(
                self.settings.pool_interval,
                lambda: maintain_pool(self.image_jobs),
                "warm pool",
                on_loop=True,
            )
        for callback in self.on_start:
            callback()

    def _schedule_jobs(self) -> None:
        """The embedded default's scheduler: what beat schedules in distributed mode."""
        s = self.settings
        for item in schedule(s.image_interval, s.reconcile_interval):
            if item.job == "reconcile_github" and not self.control_jobs.available(item.job):
                continue  # GitHub is not configured
            if item.interval_s <= 0:
                continue
            self.periodic(
                item.interval_s,
                lambda name=item.job: self._run_scheduled(name),  # type: ignore[misc]
                item.job,
                on_loop=True,
            )

    async def _run_scheduled(self, name: str) -> None:
        try:
            log.info("%s: %s", name, await run_job(self.jobs, name))
        except (JobError, ControlPlaneError) as exc:
            log.warning("%s: %s", name, exc)

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
        keep = self.runners.active_snapshot_ids()
        older_than = self.settings.snapshot_max_age_days * 86400
        removed = self.backend.collect_snapshots(older_than, keep)
        if removed:
            log.info("collected %d old snapshot(s)", len(removed))
        return removed

    def _reap(self) -> None:
        # Right after a start, a lease may have lapsed only because nobody could renew it.
        settled = time.time() - self.started_at > self.deps.config.lease_ttl_s
        dispatched = self.runners.reap(trust_expiry=settled)
        if dispatched:
            log.info("resumed %d session(s): %s", len(dispatched), ", ".join(dispatched))

    def close(self) -> None:
        if self.slack is not None:
            self.slack.close()  # no Socket Mode envelope may arrive once the executor stops
        for future in self._periodic:
            future.cancel()
        if self.executor.pending() or self.started:
            # Pooled sandboxes hold overlay mounts: end them before the loop stops.
            with contextlib.suppress(Exception):
                self.executor.submit(self.pool.close).result(timeout=30)
        # The model clients live on the executor's loop: closed there, once the runs using
        # them are cancelled (a run must not fail on a client closed under it).
        self.executor.shutdown(last=self.deps.aclose)
        if self.streams is not None:
            self.streams.stop()
        close_dispatcher = getattr(self.dispatcher, "close", None)
        if close_dispatcher is not None:
            close_dispatcher()
        for callback in self.on_close:
            callback()
        self.files.close()
        self.engine.dispose()


def build_runtime(settings: Settings, *, backend: SandboxBackend | None = None) -> Runtime:
    settings = resolved(settings)
    data_dir = settings.data_dir
    if settings.broker_url:
        distributed_checks(settings)
    redactor, engine = secrets_and_control_db(settings)

    redact_secret = redactor.learn
    files = SessionFiles(data_dir / "sessions", redactor)
    hub = EventHub(files)
    hub.handlers.append(observe)
    users = Users(engine)
    repos = Repos(
        engine,
        github_enabled=settings.github_enabled,
        data_dir=data_dir,
        api_roots=settings.api_repo_roots(),
    )
    sessions = Sessions(
        engine,
        files,
        hub,
        repos,
        users,
        base_url=settings.base_url,
        max_prompt_chars=settings.max_prompt_chars,
        max_active_per_user=settings.max_sessions_per_user,
        models=ModelChoices(settings.model_choices()),
    )
    runners = RunnerService(sessions)
    pull_requests = PullRequests(sessions)
    pulls = LocalPullRequests(engine, settings.base_url)
    pull_requests.openers["local"] = pulls
    forges = make_forges(settings)
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
        pull_requests.openers["github"] = github.opener
        repos.github_default_branch = github.default_branch

    def forge_for(spec: RepoSpec) -> Forge:
        return runtime.forge_for(spec)

    executor = InProcessExecutor()
    stack = image_stack(settings, engine, repos, data_dir, forge_for, executor, backend)
    image_service = stack.service
    repos.validators.append(image_service.validate_spec_file)

    def image_landed(spec: RepoSpec, _record: object) -> None:
        if runtime.started:
            stack.pool.image_landed(spec)

    stack.builder.on_built.append(image_landed)

    def repo_added(repo: object) -> None:
        if runtime.started:
            image_service.queue_build([getattr(repo, "name", "")], trigger="added")

    repos.on_added.append(repo_added)

    def pushed(spec: RepoSpec, _sha: str) -> None:
        # A push to the base branch (GitHub webhook) rebuilds now rather than at the next run.
        image_service.queue_build([spec.name], trigger="push")

    rebuild_hooks.append(pushed)
    control_jobs = ControlJobs()
    control = LocalControlPlane(runners, control_jobs, data_dir)
    deps = WorkerDeps(
        control=control,
        bus=InProcessBus(hub.publish),
        sandboxes=stack.provider,
        forge_for=forge_for,
        config=settings.agent_config(),
        redactor=redactor,
    )
    dispatcher: Dispatcher
    streams: StreamConsumer | None = None
    if settings.broker_url:
        from app.services.streams import StreamConsumer

        celery_dispatcher = CeleryDispatcher(settings.broker_url, settings.visibility_timeout)
        dispatcher = celery_dispatcher
        streams = StreamConsumer(settings.broker_url, hub.publish)
        runners.sync_events = streams.drain_or_unavailable
        # Images are built where sessions run: on the workers.
        image_service.send = lambda name, force, trigger: celery_dispatcher.enqueue_job(
            "build_image", name, force=force, trigger=trigger
        )
    else:
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
        runners=runners,
        pull_requests=pull_requests,
        local_pulls=pulls,
        backend=stack.backend,
        image_registry=stack.registry,
        builder=stack.builder,
        pool=stack.pool,
        image_jobs=stack.jobs,
        images=image_service,
        provider=stack.provider,
        executor=executor,
        deps=deps,
        dispatcher=dispatcher,
        forges=forges,
        web_sessions=WebSessions(engine),
        accounts=accounts,
        github=github,
        image_rebuild_hooks=rebuild_hooks,
        control_jobs=control_jobs,
        jobs=JobContext(control=control, image_jobs=stack.jobs),
        streams=streams,
        stream_slots=StreamSlots(settings.max_streams_per_user),
    )
    if github is not None:

        def reconcile() -> str:
            return reconcile_github(github, pull_requests, engine, hub, sessions).summary()

        control_jobs.register("reconcile_github", reconcile)
    # ---- Slack
    if settings.slack_enabled:
        from app.services.slack.bot import build_slack_bot

        bot = build_slack_bot(settings, engine, repos, sessions, executor, image_service)
        hub.handlers.append(bot.updater.on_event)
        runtime.on_start.append(lambda: bot.start(runtime.periodic))
        runtime.slack = bot
    return runtime
