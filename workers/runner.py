"""`run_session`: drain one session's prompt queue, one prompt at a time, as its only runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from images.provider import Acquired, SandboxProvider
from images.sandboxes.base import SandboxError
from images.spec import RepoSpec
from integrations.forge.base import Forge, ForgeError
from integrations.llm import make_model
from integrations.llm.base import ModelClient, ModelNotConfigured
from integrations.llm.types import ChatMessage
from workers.agent.hooks import Hooks, redact_output, wait_for_sync
from workers.agent.loop import AgentResult, run_agent
from workers.agent.tools import ToolContext
from workers.bus import EventPublisher
from workers.config import AgentConfig
from workers.control import ControlPlane, PromptJob, SessionContext
from workers.events import (
    BranchPushed,
    CommitCreated,
    ErrorRaised,
    Event,
    ModelRequest,
    Notice,
    PromptFinished,
    PromptOutcome,
    PromptStarted,
    SandboxReady,
    SessionStatus,
    SnapshotTaken,
    StatusChanged,
    SyncDone,
    ToolCalled,
)
from workers.gitops import GitOpsError, commit_changes, head_sha, push_commits
from workers.redact import Redactor

log = logging.getLogger("nightshift.runner")
IDLE_CHECK_S = 30.0
"""How often an idle runner looks at its queue when no nudge came (a nudge wakes it at once)."""
SYNC_TIMEOUT_S = 600.0


@dataclass
class WorkerDeps:
    control: ControlPlane
    bus: EventPublisher
    sandboxes: SandboxProvider
    forge_for: Callable[[RepoSpec], Forge]
    config: AgentConfig
    redactor: Redactor = field(default_factory=Redactor)
    model_factory: Callable[[AgentConfig], ModelClient] = field(
        default=lambda cfg: make_model(cfg.model)
    )
    extra_hooks: Callable[[SessionRunner], Hooks] | None = None


def runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class SessionRunner:
    """One attempt at draining a session's queue. Construct per `run_session` call."""

    def __init__(self, session_id: str, deps: WorkerDeps) -> None:
        self.session_id = session_id
        self.deps = deps
        self.id = runner_id()
        self.stop_requested = False
        self.lease_lost = False
        self.abandoned = False
        self.acquired: Acquired | None = None
        self.base_sha = ""
        self.ctx: SessionContext | None = None
        self.current_job: PromptJob | None = None
        self._task: asyncio.Task[None] | None = None
        self.sync_done = asyncio.Event()
        """Set while the workspace is at the base tip (or no sync is due); writes wait on it."""
        self.sync_done.set()
        self._woken = asyncio.Event()
        self._sync: asyncio.Task[None] | None = None
        self._sync_due: tuple[Acquired, PromptJob] | None = None

    async def emit(self, event: Event) -> None:
        await self.deps.bus.publish(self.session_id, event)
        if isinstance(event, (ModelRequest, ToolCalled)):
            # The sync starts once the prompt is on its way to the model: it then runs while
            # the model thinks instead of competing with the path to the first request.
            self._start_sync()

    def _start_sync(self) -> None:
        if self._sync_due is not None:
            acquired, job = self._sync_due
            self._sync_due = None
            self._sync = asyncio.create_task(self._sync_to_tip(acquired, job))

    async def status(
        self, status: SessionStatus, reason: str | None = None, job: PromptJob | None = None
    ) -> None:
        if job is None:
            await self.emit(StatusChanged(status=status, reason=reason))
        else:
            await self.emit(
                StatusChanged(status=status, reason=reason, prompt_id=job.id, attempt=job.attempt)
            )

    def abandon(self) -> None:
        """This process is shutting down: stop working and give the session back."""
        self.abandoned = True
        if self._task is not None:
            self._task.cancel()

    def request_stop(self) -> None:
        """Stop now: cancel the model stream and kill any running command."""
        self.stop_requested = True
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        control, cfg = self.deps.control, self.deps.config
        while True:
            if not await control.acquire_lease(self.session_id, self.id, cfg.lease_ttl_s):
                log.info("session %s already has a runner; this delivery exits", self.session_id)
                return
            self._task = asyncio.current_task()  # type: ignore[assignment]
            heartbeat = asyncio.create_task(self._heartbeat())
            final: SessionStatus | None = None
            try:
                final = await self._drain()
            except asyncio.CancelledError:
                if not self.stop_requested:
                    raise  # shutdown or lost lease: the reaper hands the session to another runner
                await self._stopped()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                # Only a drained queue leaves a snapshot: an interrupted or stopped prompt's
                # half-done work must not become the starting point of the next attempt.
                await self._release_sandbox(snapshot=final is not None)
                if self.abandoned:
                    # This process is going away: let the reaper hand the session on now
                    # rather than when the lease lapses.
                    with contextlib.suppress(Exception):
                        await control.release_lease(self.session_id, self.id)
            if final is not None:
                await self.status(final)
            more = await control.release_lease(self.session_id, self.id)
            if self.stop_requested or self.lease_lost or not more:
                return

    async def _heartbeat(self) -> None:
        cfg = self.deps.config
        while True:
            await asyncio.sleep(cfg.heartbeat_s)
            try:
                state = await self.deps.control.renew_lease(
                    self.session_id, self.id, cfg.lease_ttl_s
                )
            except Exception:  # the control plane may be restarting; the lease TTL covers us
                log.warning("lease renewal failed for %s", self.session_id, exc_info=True)
                continue
            if state == "stop":
                self.request_stop()
                return
            if state == "lost":
                self.lease_lost = True
                if self._task is not None:
                    self._task.cancel()
                return

    async def _drain(self) -> SessionStatus | None:
        """Run queued prompts until none is left; the final status, or None when none ran
        (a duplicate delivery after the work was done must not touch the session)."""
        control = self.deps.control
        self.ctx = await control.session_context(self.session_id)
        last: PromptOutcome | None = None
        while True:
            job = await control.next_prompt(self.session_id, self.id)
            if job is None and self.acquired is not None and self.deps.config.idle_s > 0:
                job = await self._wait_idle()
            if job is None:
                break
            last = await self._run_prompt(job)
            self.ctx = await control.session_context(self.session_id)
        if last is None:
            return None
        return "failed" if last == "failed" else "finished"

    async def _wait_idle(self) -> PromptJob | None:
        """Keep the sandbox for a follow-up: woken at once by `wake()` (the dispatcher's nudge
        when a prompt is queued), and checking the queue every few seconds should a nudge be
        missed, so an idle session costs the control plane next to nothing."""
        await self.status("idle")
        deadline = time.monotonic() + self.deps.config.idle_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), min(left, IDLE_CHECK_S))
            self._woken.clear()
            job = await self.deps.control.next_prompt(self.session_id, self.id)
            if job is not None:
                return job
        return None

    def wake(self) -> None:
        """A prompt was queued for this session (call on the runner's event loop)."""
        self._woken.set()

    async def _stopped(self) -> None:
        # Cancellation was delivered once; these awaits run normally.
        job = self.current_job
        await self.emit(
            PromptFinished(
                outcome="stopped",
                summary="stopped on request",
                prompt_id=job.id if job else None,
                attempt=job.attempt if job else 1,
            )
        )
        await self.status("stopped", "stopped on request")

    async def _release_sandbox(self, snapshot: bool) -> None:
        acquired, self.acquired = self.acquired, None
        if acquired is None:
            return
        self._sync_due = None
        self.sync_done.set()
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
            self._sync = None
        try:
            if snapshot:
                ref = await acquired.sandbox.snapshot()
                await self.emit(SnapshotTaken(snapshot=ref))
        except (SandboxError, OSError) as exc:
            log.warning("snapshot of %s failed: %s", acquired.sandbox.id, exc)
        finally:
            await acquired.sandbox.terminate()

    async def _ensure_sandbox(self, job: PromptJob) -> Acquired:
        if self.acquired is not None:
            return self.acquired
        assert self.ctx is not None
        await self.status("starting", job=job)
        acquired = await self.deps.sandboxes.acquire(
            self.ctx.repo,
            snapshot=self.ctx.snapshot,
            label=self.session_id,
            claimant=str(job.author.id),
        )
        self.acquired = acquired
        self.base_sha = acquired.base_sha
        if acquired.mode != "snapshot":
            # A follow-up keeps the base it started from; every fresh sandbox catches up with
            # the base tip in the background while the agent reads (see `emit`).
            self.sync_done.clear()
            self._sync_due = (acquired, job)
        await self.emit(
            SandboxReady(
                mode=acquired.mode,
                sandbox_id=acquired.sandbox.id,
                image=acquired.image.id,
                ms_since_prompt=int((time.time() - job.created_at) * 1000),
                prompt_id=job.id,
                attempt=job.attempt,
            )
        )
        for note in acquired.notes:
            await self.emit(Notice(message=note, prompt_id=job.id, attempt=job.attempt))
        return acquired

    async def _sync_to_tip(self, acquired: Acquired, job: PromptJob) -> None:
        assert self.ctx is not None
        started = time.monotonic()
        try:
            sha = await asyncio.wait_for(
                self.deps.sandboxes.sync(acquired, self.ctx.repo), SYNC_TIMEOUT_S
            )
            self.base_sha = sha
            await self.emit(
                SyncDone(
                    sha=sha,
                    ms=int((time.monotonic() - started) * 1000),
                    prompt_id=job.id,
                    attempt=job.attempt,
                )
            )
        except (SandboxError, ForgeError, OSError, TimeoutError) as exc:
            log.warning("sync of %s failed: %s", self.session_id, exc)
            await self.emit(
                Notice(
                    message=f"could not bring the sandbox to the tip of {self.ctx.repo.base} "
                    f"({exc}); working on {acquired.base_sha[:10]}",
                    prompt_id=job.id,
                    attempt=job.attempt,
                )
            )
        finally:
            self.sync_done.set()

    def hooks(self) -> Hooks:
        hooks = Hooks(
            before_tool=[wait_for_sync(self.sync_done)],
            after_tool=[redact_output(self.deps.redactor)],
        )
        if self.deps.extra_hooks is not None:
            extra = self.deps.extra_hooks(self)
            hooks.before_tool += extra.before_tool
            hooks.after_tool += extra.after_tool
        return hooks

    async def _fail(self, job: PromptJob, code: str, message: str) -> PromptOutcome:
        await self.emit(
            ErrorRaised(code=code, message=message, prompt_id=job.id, attempt=job.attempt)
        )
        await self.emit(
            PromptFinished(outcome="failed", summary=message, prompt_id=job.id, attempt=job.attempt)
        )
        return "failed"

    async def _run_prompt(self, job: PromptJob) -> PromptOutcome:
        assert self.ctx is not None
        ctx = self.ctx
        self.current_job = job
        await self.emit(
            PromptStarted(
                author=job.author,
                ms_waiting=int((time.time() - job.created_at) * 1000),
                prompt_id=job.id,
                attempt=job.attempt,
            )
        )
        try:
            model = self.deps.model_factory(self.deps.config)
        except ModelNotConfigured as exc:
            return await self._fail(job, "model_not_configured", str(exc))
        try:
            acquired = await self._ensure_sandbox(job)
            await self.status("running", job=job)
            tool_ctx = ToolContext(
                session_id=self.session_id,
                sandbox=acquired.sandbox,
                control=self.deps.control,
                author=job.author,
                repo=acquired.spec or ctx.repo,
                config=self.deps.config,
                emit=self.emit,
                depth=ctx.depth,
                prompt_id=job.id,
                attempt=job.attempt,
            )
            user = ChatMessage(role="user", text=_user_text(job, ctx))
            result = await run_agent(
                tool_ctx, model, self.hooks(), ctx.history, user, job.created_at
            )
            if result.outcome != "failed":
                await self._publish_work(job, result)
        except (SandboxError, ForgeError, GitOpsError) as exc:
            return await self._fail(
                job, "sandbox_error" if isinstance(exc, SandboxError) else "git_error", str(exc)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("prompt %s of session %s failed", job.id, self.session_id)
            return await self._fail(job, "internal", f"internal error: {type(exc).__name__}: {exc}")
        finally:
            await model.aclose()
        await self.emit(
            PromptFinished(
                outcome=result.outcome,
                summary=result.summary,
                prompt_id=job.id,
                attempt=job.attempt,
            )
        )
        return result.outcome

    async def _publish_work(self, job: PromptJob, result: AgentResult) -> None:
        """Commit as the prompting person, push from outside the sandbox, announce the branch."""
        assert self.ctx is not None and self.acquired is not None
        ctx, sandbox = self.ctx, self.acquired.sandbox
        self._start_sync()
        await self.sync_done.wait()  # commits stand on the synced base, like every write
        title = result.title or ctx.title or _first_line(job.text)
        committed = await commit_changes(sandbox, title, result.summary, job.author, ctx.authors)
        if committed is not None:
            await self.emit(
                CommitCreated(
                    sha=committed.sha,
                    author=job.author.git_identity(),
                    co_authors=committed.co_authors,
                    message=committed.message,
                    prompt_id=job.id,
                    attempt=job.attempt,
                )
            )
        head = await head_sha(sandbox)
        if head in (self.base_sha, ctx.pushed_sha):
            return
        forge = self.deps.forge_for(ctx.repo)
        pushed = await push_commits(
            sandbox, forge, ctx.repo.url, ctx.branch, self.base_sha, ctx.pushed_sha
        )
        await self.emit(
            BranchPushed(
                branch=ctx.branch,
                sha=pushed,
                base=ctx.repo.base,
                base_sha=self.base_sha,
                title=title,
                body=result.summary,
                prompt_id=job.id,
                attempt=job.attempt,
            )
        )


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "Changes from Nightshift"
    return line[:72]


def _user_text(job: PromptJob, ctx: SessionContext) -> str:
    if len({a.email for a in [*ctx.authors, job.author]}) > 1:
        return f"From {job.author.name} (@{job.author.login}):\n{job.text}"
    return job.text


class Runners:
    """The runners alive in this process, by session: where a stop request finds them."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[SessionRunner]] = {}

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_session.values())

    def add(self, runner: SessionRunner) -> None:
        self._by_session.setdefault(runner.session_id, set()).add(runner)

    def discard(self, runner: SessionRunner) -> None:
        runners = self._by_session.get(runner.session_id)
        if runners is not None:
            runners.discard(runner)
            if not runners:
                del self._by_session[runner.session_id]

    def active(self, session_id: str) -> bool:
        """A runner of this session is alive and not stopping."""
        return any(not r.stop_requested for r in self._by_session.get(session_id, ()))

    def wake(self, session_id: str) -> int:
        """Tell idle runners of a session that a prompt is queued (on the runners' loop)."""
        runners = list(self._by_session.get(session_id, ()))
        for runner in runners:
            runner.wake()
        return len(runners)

    def stop(self, session_id: str) -> int:
        """Stop every runner of a session now (call on the runners' event loop)."""
        runners = list(self._by_session.get(session_id, ()))
        for runner in runners:
            runner.request_stop()
        return len(runners)

    def all(self) -> list[SessionRunner]:
        return [r for rs in self._by_session.values() for r in rs]

    def abandon_all(self) -> int:
        """Shutting down: every runner gives its session back (call on the runners' loop)."""
        runners = self.all()
        for runner in runners:
            runner.abandon()
        return len(runners)


async def run_session(session_id: str, deps: WorkerDeps, runners: Runners | None = None) -> None:
    """The `run_session` task, under every dispatcher: drain a session's queue.

    A duplicate delivery (the lease is held elsewhere, or nothing is queued) returns at once
    without touching the session.
    """
    runner = SessionRunner(session_id, deps)
    if runners is not None:
        runners.add(runner)
    try:
        await runner.run()
    finally:
        if runners is not None:
            runners.discard(runner)
