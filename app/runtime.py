"""The composition root of the API process: `build_runtime(settings)` builds every service,
each with its collaborators passed to its constructor, in dependency order; `event_handlers`
is the one table of which service acts on which event.

`serve`, `run` and the tests all start from `build_runtime(settings)`; `nightshift worker`
from `build_worker(settings)` (`app/worker_runtime.py`); what both share is `app/wiring.py`.
Nothing happens at import time, and nothing is assigned onto a service once it is built.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from pydantic import BaseModel

from app.control_jobs import ControlJobs
from app.local_control import LocalControlPlane
from app.metrics import observe
from app.models import Repo
from app.process import Periodic, Runtime
from app.services.desktop import Desktops
from app.services.event_writer import EventWriter, StagedPublishes
from app.services.github.accounts import build_accounts
from app.services.github.app import (
    GitHubServices,
    RebuildHook,
    build_github,
    default_branch,
    github_app,
    github_opener,
    reconcile_github,
)
from app.services.hub import EventHub, On
from app.services.ide import Ides, ide_origin
from app.services.model_choices import ModelChoices
from app.services.ownership import Ownership
from app.services.peers import PeerSigner, SessionPeers
from app.services.pull_requests import LocalPullRequests, PullRequestOpener, PullRequests
from app.services.repo_catalog import RepoCatalog
from app.services.repos import Repos
from app.services.runners import RunnerService
from app.services.session_index import IndexWriter
from app.services.sessions import Sessions
from app.services.stream_slots import StreamSlots
from app.services.users import Users
from app.services.websessions import WebSessions
from app.sessionstore import SessionFiles
from app.settings import Settings
from app.wiring import (
    distributed_checks,
    forge_finder,
    image_stack,
    make_forges,
    peer_secret,
    process_state_dir,
    resolved,
    secrets_and_control_db,
)
from images.registry import Trigger
from images.sandboxes.base import SandboxBackend
from images.spec import RepoSpec
from workers.dispatch import CeleryDispatcher, InProcessDispatcher
from workers.events import BranchPushed, CommitCreated, PromptQueued, PrOpened
from workers.executor import InProcessExecutor
from workers.runner import WorkerDeps
from workers.scheduled import JobContext

if TYPE_CHECKING:
    from app.services.slack.bot import SlackBot
    from app.services.streams import StreamConsumer

__all__ = ["Runtime", "build_runtime", "event_handlers"]


def of(*kinds: type[BaseModel]) -> frozenset[str]:
    """The `type` names of event classes, for a row of the table."""
    return frozenset(str(kind.model_fields["type"].default) for kind in kinds)


def event_handlers(
    index: IndexWriter,
    pull_requests: PullRequests,
    github: GitHubServices | None,
    slack: SlackBot | None,
) -> list[On]:
    """What happens when an event is published (`EventHub.publish`), in this order.

    Every row but the PR opener runs in the publisher's thread under the session's publish
    lock. The PR opener runs `after_lock`: once the outermost publish of that thread has
    released its lock, in the same thread, before that publish returns (a runner's
    `branch_pushed` therefore opens the PR before the runner's publish call comes back).
    """
    table = [
        # every event → the Prometheus counters (`GET /metrics`)
        On(None, observe),
        # every event → the control DB's index (status, pushed branch, PR, snapshot, usage)
        On(None, index.apply),
        # `branch_pushed` → open (or update) the session's PR through its forge's opener
        On(of(BranchPushed), pull_requests.on_pushed, after_lock=True),
    ]
    if github is not None:
        table += [
            # `pr_opened` of a session started from an issue → add `Fixes #N` to the PR
            On(of(PrOpened), github.triggers.asks.on_event, after_index=True),
            # the agent's commits, pushes, PR and follow-ups → `GET /api/stats`
            On(
                of(CommitCreated, BranchPushed, PrOpened, PromptQueued),
                github.pr_stats.on_event,
                after_index=True,
            ),
        ]
    if slack is not None:
        from app.services.slack.status import TRIGGERS

        # what a Slack thread shows (status, progress, PR) → refresh the thread's message
        # (it renders the session as the index says, so after the index is written)
        table.append(On(TRIGGERS, slack.updater.on_event, after_index=True))
    return table


def in_background(executor: InProcessExecutor) -> Callable[[Callable[[], object]], object]:
    """`submit(fn)`: run blocking `fn` in a thread, started from the executor's loop."""
    return lambda fn: executor.submit(lambda: asyncio.to_thread(fn))


def build_runtime(settings: Settings, *, backend: SandboxBackend | None = None) -> Runtime:
    settings = resolved(settings)
    data_dir = settings.data_dir
    if settings.broker_url:
        distributed_checks(settings)
    if settings.peer_url:
        peer_secret(settings)  # several API processes sign what they forward to each other

    # 1. Secrets, the control DB, the loop every background job runs on.
    redactor, engine = secrets_and_control_db(settings)
    running = threading.Event()
    # Several API processes: each owns some sessions (`Ownership`) and has its own sandboxes.
    owners = Ownership(engine, settings.peer_url, settings.owner_ttl) if settings.peer_url else None
    state_dir = process_state_dir(settings)
    executor = InProcessExecutor()
    periodic = Periodic(executor)
    # 2. Forges and who we are on GitHub.
    app = github_app(settings, redactor.learn)
    forges = make_forges(settings, app)
    forge_for = forge_finder(forges, "server")
    accounts = build_accounts(settings, engine, redactor.learn)
    celery = (
        CeleryDispatcher(settings.broker_url, settings.visibility_timeout)
        if settings.broker_url
        else None
    )
    # 3. Images: built here, or (distributed) handed to the workers, where sessions run.
    send: Callable[[str, bool, Trigger], None] | None = None
    if celery is not None:
        send = partial(_send_build, celery)
    stack = image_stack(
        settings,
        engine,
        RepoCatalog(engine),
        state_dir,
        forge_for,
        executor,
        refresh_pool=running.is_set,
        send=send,
        backend=backend,
    )
    images = stack.service

    def build_repo(trigger: Trigger, repo: Repo) -> None:
        if running.is_set():
            images.queue_build([repo.name], trigger=trigger)

    # 4. Repos and people.
    repos = Repos(
        engine,
        github_enabled=settings.github_enabled,
        github_default_branch=partial(default_branch, app) if app is not None else None,
        data_dir=data_dir,
        api_roots=settings.api_repo_roots(),
        validators=[images.validate_spec_file],
        on_added=[partial(build_repo, "added")],
        on_changed=[partial(build_repo, "changed")],
    )
    users = Users(engine)
    # 5. Session files and the event hub. The hub's table names services built below (they
    # publish through the hub); it is read at the first publish.
    files = SessionFiles(data_dir / "sessions", redactor)
    index = IndexWriter(engine)
    peers = SessionPeers(owners, PeerSigner(peer_secret(settings))) if owners else None
    hub = EventHub(files, lambda: event_handlers(index, pull_requests, github, slack), peers)
    streams: StreamConsumer | None = None
    if settings.broker_url:
        from app.services.streams import StreamConsumer

        # Several API processes: each persists the events of the sessions it owns.
        staged = StagedPublishes(hub, index)
        streams = StreamConsumer(
            settings.broker_url,
            staged.publish,
            owns=owners.holds if owners else None,
            staging=staged.batch,
        )
    # 6. Sessions and what runs them. In-process runners call back into the control plane
    # (which creates and dispatches sessions): the dispatcher reads `deps` per run.
    dispatcher = celery or InProcessDispatcher(executor, lambda: deps)
    sessions = Sessions(
        engine,
        files,
        hub,
        repos,
        users,
        index,
        dispatcher,
        base_url=settings.base_url,
        max_prompt_chars=settings.max_prompt_chars,
        max_active_per_user=settings.max_sessions_per_user,
        models=ModelChoices(settings.model_choices()),
        peers=peers,
    )
    runners = (
        RunnerService(sessions, sync_events=streams.drain_or_unavailable, owners=owners)
        if streams is not None
        else RunnerService(sessions, owners=owners)
    )
    # 7. Pull requests, opened by the event table's `branch_pushed` row.
    local_pulls = LocalPullRequests(engine, settings.base_url)
    openers: dict[str, PullRequestOpener] = {"local": local_pulls}
    gh_opener = github_opener(settings, app, accounts) if app is not None else None
    if gh_opener is not None:
        openers["github"] = gh_opener
    pull_requests = PullRequests(sessions, openers)
    # 8. GitHub's webhooks, triggers and CI. A push to a repo's base branch rebuilds its image.
    rebuild_hooks: list[RebuildHook] = [partial(_rebuild_on_push, images.queue_build)]
    github: GitHubServices | None = None
    if app is not None and gh_opener is not None:
        github = build_github(
            settings,
            app=app,
            forge=forges["github"],
            opener=gh_opener,
            engine=engine,
            sessions=sessions,
            accounts=accounts,
            submit=in_background(executor),
            rebuild_hooks=rebuild_hooks,
        )
    # 9. The control plane as in-process runners see it.
    control_jobs = ControlJobs(_control_jobs(github, pull_requests, sessions))
    control = LocalControlPlane(runners, control_jobs, data_dir)
    deps = WorkerDeps(
        control=control,
        bus=EventWriter(hub, index),
        sandboxes=stack.provider,
        forge_for=forge_for,
        config=settings.agent_config(),
        redactor=redactor,
    )
    # 10. Session desktops and IDEs (their sandboxes are the in-process runners'; none
    # distributed).
    live = dispatcher.runners if isinstance(dispatcher, InProcessDispatcher) else None
    desktops = Desktops(
        sessions, hub, executor, live, enabled=settings.desktop, idle_s=settings.ide_idle_seconds
    )
    ides = Ides(
        sessions,
        hub,
        executor,
        live,
        enabled=settings.ide,
        command=settings.ide_command,
        origin=ide_origin(settings),
        idle_s=settings.ide_idle_seconds,
    )
    # 11. Slack.
    slack: SlackBot | None = None
    on_start: list[Callable[[], None]] = []
    if settings.slack_enabled:
        from app.services.slack.bot import build_slack_bot

        slack = build_slack_bot(settings, engine, repos, sessions, executor, images)
        on_start.append(partial(slack.start, periodic))
    return Runtime(
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
        local_pulls=local_pulls,
        backend=stack.backend,
        image_registry=stack.registry,
        builder=stack.builder,
        pool=stack.pool,
        image_jobs=stack.jobs,
        images=images,
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
        stream_slots=StreamSlots(settings.max_streams_per_user),
        periodic=periodic,
        running=running,
        desktops=desktops,
        ides=ides,
        streams=streams,
        on_start=on_start,
        slack=slack,
        owners=owners,
        peers=peers,
        state_dir=state_dir,
    )


def _send_build(celery: CeleryDispatcher, name: str, force: bool, trigger: Trigger) -> None:
    celery.enqueue_job("build_image", name, force=force, trigger=trigger)


def _rebuild_on_push(queue_build: Callable[..., object], spec: RepoSpec, _sha: str) -> None:
    """A push to the base branch (GitHub webhook) rebuilds now rather than at the next run."""
    queue_build([spec.name], trigger="push")


def _control_jobs(
    github: GitHubServices | None, pull_requests: PullRequests, sessions: Sessions
) -> dict[str, Callable[[], str]]:
    if github is None:
        return {}
    return {
        "reconcile_github": lambda: reconcile_github(
            github, pull_requests, sessions.engine, sessions.hub, sessions
        ).summary()
    }
