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
        self.acquired: Acquired | None = None
        self.base_sha = ""
        self.ctx: SessionContext | None = None
        self.current_job: PromptJob | None = None
        self._task: asyncio.Task[None] | None = None
        self.sync_done = asyncio.Event()
        """Set while the workspace is at the base tip (or no sync is due); writes wait on it."""
        self.sync_done.set()
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

    async def status(self, status: SessionStatus, reason: str | None = None) -> None:
        await self.emit(StatusChanged(status=status, reason=reason))

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

    async def _drain(self) -> SessionStatus:
        control = self.deps.control
        self.ctx = await control.session_context(self.session_id)
        last: PromptOutcome = "done"
        while True:
            job = await control.next_prompt(self.session_id, self.id)
            if job is None and self.acquired is not None and self.deps.config.idle_s > 0:
                job = await self._wait_idle()
            if job is None:
                break
            last = await self._run_prompt(job)
            self.ctx = await control.session_context(self.session_id)
        return "failed" if last == "failed" else "finished"

    async def _wait_idle(self) -> PromptJob | None:
        await self.status("idle")
        deadline = time.monotonic() + self.deps.config.idle_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            job = await self.deps.control.next_prompt(self.session_id, self.id)
            if job is not None:
                return job
        return None

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
        await self.status("starting")
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
            await self.status("running")
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


async def run_session(session_id: str, deps: WorkerDeps) -> None:
    """Drain a session's queue; a duplicate delivery (lease held elsewhere) returns at once."""
    await SessionRunner(session_id, deps).run()
