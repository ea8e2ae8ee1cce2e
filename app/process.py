"""The API process: the services `build_runtime` (app/runtime.py) composed, and their life:
start (recovery, periodic jobs), and close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from app.control_jobs import ControlJobs
from app.services.desktop import Desktops
from app.services.github.accounts import GitHubAccounts
from app.services.github.app import GitHubServices, RebuildHook
from app.services.hub import EventHub
from app.services.ide import Ides
from app.services.images import Images
from app.services.ownership import Ownership
from app.services.peers import SessionPeers
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
    collect_snapshots,
    forge_finder,
    release_left_mounts,
    release_stale_sandboxes,
)
from images.builder import ImageBuilder
from images.image_jobs import ImageJobs, maintain_pool
from images.pool import WarmPool
from images.provider import SandboxProvider
from images.registry import ImageRegistry
from images.sandboxes.base import SandboxBackend
from images.spec import RepoSpec
from integrations.forge.base import Forge
from workers.dispatch import Dispatcher
from workers.errors import ControlPlaneError, JobError
from workers.executor import InProcessExecutor, every
from workers.redact import Redactor
from workers.runner import WorkerDeps
from workers.scheduled import JobContext, run_job, schedule

if TYPE_CHECKING:
    from app.services.slack.bot import SlackBot
    from app.services.streams import StreamConsumer

log = logging.getLogger("nightshift")


class Periodic:
    """Runs jobs every so many seconds on the in-process executor (until `cancel`)."""

    def __init__(self, executor: InProcessExecutor) -> None:
        self.executor = executor
        self._futures: list[concurrent.futures.Future[None]] = []

    def __call__(
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

        self._futures.append(self.executor.submit(lambda: every(interval, job, name)))

    def cancel(self) -> None:
        for future in self._futures:
            future.cancel()


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
    periodic: Periodic
    """Runs this process's periodic jobs: `runtime.periodic(interval, fn, name)`."""
    running: threading.Event
    """Set once `start` has run: new images and repos act on the pool and builds from then."""
    desktops: Desktops
    """Session desktops (`/api/sessions/{id}/desktop`)."""
    ides: Ides
    """VS Code in the browser (`/api/sessions/{id}/ide`, shown on the IDE origin)."""
    streams: StreamConsumer | None = None
    """Distributed mode: persists the events workers publish on Redis streams."""
    presence: Presence = field(default_factory=Presence)
    """Who is viewing which session (web viewer); in memory, never persisted."""
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    slack: SlackBot | None = None
    """The Slack bot, when SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN) are set."""
    started_at: float = 0.0
    owners: Ownership | None = None
    """Several API processes: the sessions this one owns (None: it owns every session)."""
    peers: SessionPeers | None = None
    """Several API processes: writes to sessions another process owns go to it."""
    state_dir: Path | None = None
    """Where this process's sandboxes live (None: the data dir)."""

    @property
    def distributed(self) -> bool:
        return self.settings.broker_url is not None

    @property
    def started(self) -> bool:
        return self.running.is_set()

    def forge_for(self, spec: RepoSpec) -> Forge:
        return forge_finder(self.forges, "server")(spec)

    def start(self) -> None:
        """Recover sessions a previous process left behind and start periodic jobs.

        The reaper runs here, in the process that owns the session files, in both modes. In
        distributed mode this process also consumes the event streams, while beat schedules
        image builds and PR reconciliation and each worker looks after its own warm pool.
        """
        self.executor.start()
        self.started_at = time.time()
        release_left_mounts(
            self.state_dir or self.settings.data_dir, set(self.backend.live), "a previous process"
        )
        if self.owners is not None:
            self.periodic(self.owners.ttl / 3, self.owners.renew, "session ownership")
        if self.streams is not None:
            self.streams.start()
        self.periodic(self.settings.reap_interval, self._reap, "reaper")
        self.periodic(SNAPSHOT_GC_INTERVAL_S, self.collect_snapshots, "snapshot collection")
        self.periodic(
            STALE_SWEEP_INTERVAL_S, lambda: release_stale_sandboxes(self.backend), "stale sweep"
        )
        self.running.set()
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
                partial(self._run_scheduled, item.job),
                item.job,
                on_loop=True,
            )

    async def _run_scheduled(self, name: str) -> None:
        try:
            log.info("%s: %s", name, await run_job(self.jobs, name))
        except (JobError, ControlPlaneError) as exc:
            log.warning("%s: %s", name, exc)

    def collect_snapshots(self) -> list[str]:
        """Delete snapshots past NIGHTSHIFT_SNAPSHOT_MAX_AGE_DAYS, except those an active
        session will start its next prompt from (an old session's follow-up falls back to the
        newest image, with a notice)."""
        return collect_snapshots(
            self.backend, self.settings.snapshot_max_age_days, self.runners.active_snapshot_ids()
        )

    def _reap(self) -> None:
        # Right after a start, a lease may have lapsed only because nobody could renew it.
        settled = time.time() - self.started_at > self.deps.config.lease_ttl_s
        dispatched = self.runners.reap(trust_expiry=settled)
        if dispatched:
            log.info("resumed %d session(s): %s", len(dispatched), ", ".join(dispatched))

    def close(self) -> None:
        if self.slack is not None:
            self.slack.close()  # no Socket Mode envelope may arrive once the executor stops
        self.periodic.cancel()
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
        if self.owners is not None:
            # Its runners are stopped: the other processes take its sessions over at once.
            with contextlib.suppress(Exception):
                self.owners.release()
        if self.peers is not None:
            self.peers.close()
        self.files.close()
        self.engine.dispose()
