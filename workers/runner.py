"""`run_session`: drain one session's prompt queue, one prompt at a time, as its only runner."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from images.errors import ImagesError
from images.provider import SandboxProvider
from images.sandboxes.base import SandboxError
from images.spec import RepoSpec
from integrations.errors import IntegrationsError
from integrations.forge.base import Forge, ForgeError
from integrations.llm import ModelPool
from integrations.llm.base import ModelNotConfigured
from integrations.llm.types import ChatMessage
from workers.agent.hooks import Hooks, redact_output, wait_for_sync
from workers.agent.loop import run_agent
from workers.agent.plugins import load_plugins, plugin_hooks
from workers.agent.resume import RESUME_EVENT_TYPES, Resumed, rebuild
from workers.agent.tools import TOOLS, ToolContext
from workers.bus import EventPublisher
from workers.config import AgentConfig
from workers.control import ControlPlane, PromptJob, RunStart, SessionContext
from workers.errors import WorkersError
from workers.events import (
    Author,
    ErrorRaised,
    Event,
    ModelRequest,
    PromptFinished,
    PromptOutcome,
    PromptStarted,
    SessionStatus,
    StatusChanged,
    ToolCalled,
    UsageReported,
    for_prompt,
)
from workers.gitops import GitOpsError
from workers.publish import ide_editors, publish_work
from workers.redact import Redactor
from workers.session_sandbox import SessionSandbox

log = logging.getLogger("nightshift.runner")
HEARTBEAT_PHASE = random.uniform(0, 60)
"""Where this process's heartbeat tick falls: the same for its runners, different from other
processes' (whose renewals then reach a shared control plane spread out, not all at once)."""
IDLE_CHECK_S = 30.0
"""How often an idle runner looks at its queue when no nudge came (a nudge wakes it at once)."""


@dataclass
class WorkerDeps:
    control: ControlPlane
    bus: EventPublisher
    sandboxes: SandboxProvider
    forge_for: Callable[[RepoSpec], Forge]
    config: AgentConfig
    redactor: Redactor = field(default_factory=Redactor)
    extra_hooks: Callable[[SessionRunner], Hooks] | None = None
    models: ModelPool = field(init=False)
    """The process's long-lived model clients, one per provider (closed by `aclose`)."""

    def __post_init__(self) -> None:
        self.models = ModelPool(self.config.model)
        self.models.prepare()  # the default model's client exists before the first prompt

    async def aclose(self) -> None:
        """Close what the runners share (the model clients, the bus's and the control plane's
        connections) at shutdown."""
        await self.models.aclose()
        await self.bus.aclose()
        await self.control.aclose()


_plugins = functools.cache(load_plugins)
"""Plugins are imported once per process (and checked at `serve`/`worker` start)."""


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
        self.sandbox = SessionSandbox(
            session_id, deps.sandboxes, self.emit, deps.config.checkpoint_s
        )
        self.ctx: SessionContext | None = None
        self.current_job: PromptJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._hooks = self.hooks()

    async def _publish(self, event: Event) -> None:
        await self.deps.bus.publish(self.session_id, event)

    async def emit(self, event: Event) -> None:
        await self._publish(event)
        if isinstance(event, (ModelRequest, ToolCalled)) and self.ctx is not None:
            # The sync starts once the prompt is on its way to the model: it then runs while
            # the model thinks instead of competing with the path to the first request.
            self.sandbox.start_sync(self.ctx.repo)
        for hook in self._hooks.on_event:
            await hook(event)

    async def status(
        self, status: SessionStatus, reason: str | None = None, job: PromptJob | None = None
    ) -> None:
        event = StatusChanged(status=status, reason=reason)
        await (self.emit(event) if job is None else self.emit_for(job, event))

    async def emit_for(self, job: PromptJob, event: Event) -> None:
        """Publish an event of `job`'s run attempt."""
        await for_prompt(self.emit, job.id, job.attempt)(event)

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
            start = await control.start_run(self.session_id, self.id, cfg.lease_ttl_s)
            if not start.leased:
                log.info("session %s already has a runner; this delivery exits", self.session_id)
                return
            self._task = asyncio.current_task()
            heartbeat = asyncio.create_task(self._heartbeat())
            final: SessionStatus | None = None
            try:
                final = await self._drain(start)
            except asyncio.CancelledError:
                if not self.stop_requested:
                    raise  # shutdown or lost lease: the reaper hands the session to another runner
                await self._stopped()
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                # A drained queue leaves a snapshot; an interrupted prompt's next attempt starts
                # from the checkpoint after its last turn that wrote (`SessionSandbox.checkpoint`).
                await self.sandbox.release(snapshot=final is not None)
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
            # On this process's tick, not on a clock of the runner's own: the runners of one
            # process renew together, and the control plane writes their renewals at once.
            await asyncio.sleep(cfg.heartbeat_s - (time.time() - HEARTBEAT_PHASE) % cfg.heartbeat_s)
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

    async def _drain(self, start: RunStart) -> SessionStatus | None:
        """Run queued prompts until none is left, the first one (with its context) as `start`
        brought it; the final status, or None when none ran (a duplicate delivery after the
        work was done must not touch the session)."""
        control = self.deps.control
        last: PromptOutcome | None = None
        job, self.ctx = start.job, start.context
        while True:
            if job is None and self.sandbox.acquired is not None and self.deps.config.idle_s > 0:
                job = await self._wait_idle()
            if job is None:
                break
            if self.ctx is None:
                self.ctx = await control.session_context(self.session_id)
            last = await self._run_prompt(job)
            # Read again, with the conversation so far, only once there is another prompt to
            # run: a session that goes idle after its prompt does not read it for nothing.
            # A nudge before this look is answered by it (a redelivery's does not wake us).
            self.ctx = None
            self._woken.clear()
            job = await control.next_prompt(self.session_id, self.id)
        if last is None:
            return None
        return "failed" if last == "failed" else "finished"

    async def _wait_idle(self) -> PromptJob | None:
        """Keep the sandbox for a follow-up: woken at once by `wake()` (the dispatcher's nudge
        when a prompt is queued), and checking the queue every few seconds should a nudge be
        missed, so an idle session costs the control plane next to nothing. Time up with no
        nudge, it does not look again: the lease's release reports a prompt queued since."""
        await self.status("idle")
        deadline = time.monotonic() + self.deps.config.idle_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), min(left, IDLE_CHECK_S))
            if not self._woken.is_set() and time.monotonic() >= deadline:
                return None
            self._woken.clear()
            if job := await self.deps.control.next_prompt(self.session_id, self.id):
                return job
        return None

    def wake(self) -> None:
        """A prompt was queued for this session (call on the runner's event loop)."""
        self._woken.set()

    async def _stopped(self) -> None:
        # Cancellation was delivered once; these awaits run normally.
        job = self.current_job
        finished = PromptFinished(outcome="stopped", summary="stopped on request")
        await (self.emit(finished) if job is None else self.emit_for(job, finished))
        await self.status("stopped", "stopped on request")

    def hooks(self) -> Hooks:
        hooks = Hooks(
            before_tool=[wait_for_sync(self.sandbox.sync_done)],
            after_tool=[redact_output(self.deps.redactor)],
        )
        extras = [plugin_hooks(_plugins(self.deps.config.plugins), report=self._publish)]
        if self.deps.extra_hooks is not None:
            extras.append(self.deps.extra_hooks(self))
        for extra in extras:
            hooks.before_tool += extra.before_tool
            hooks.after_tool += extra.after_tool
            hooks.system_prompt += extra.system_prompt
            hooks.tools += extra.tools
            hooks.on_event += extra.on_event
        return hooks

    async def _spent_usd(self) -> float:
        """The session's estimated spend so far, from its stored usage events (every prompt
        and attempt, whichever worker ran it), for NIGHTSHIFT_SESSION_BUDGET_USD."""
        if self.deps.config.session_budget_usd is None:
            return 0.0
        usage = await self.deps.control.stored_events(self.session_id, ["usage"])
        return sum(e.cost_usd or 0.0 for e in usage if isinstance(e, UsageReported))

    async def _ide_editors(self) -> list[Author]:
        """Who changed files through the IDE since the session's last commit."""
        return ide_editors(
            await self.deps.control.stored_events(
                self.session_id, ["commit_created", "ide_files_edited"]
            )
        )

    async def _resumed(self, job: PromptJob) -> Resumed | None:
        """What earlier attempts of `job` stored to go on from (None on a first attempt)."""
        if job.attempt <= 1:
            return None
        events = await self.deps.control.stored_events(
            self.session_id, RESUME_EVENT_TYPES, prompt_id=job.id
        )
        tools = {**TOOLS, **{t.name: t for t in self._hooks.tools}}
        # A tool no longer known is taken to write: the model is told to check its effect.
        return rebuild(events, lambda name: name not in tools or tools[name].writes)

    async def _fail(self, job: PromptJob, code: str, message: str) -> PromptOutcome:
        await self.emit_for(job, ErrorRaised(code=code, message=message))
        await self.emit_for(job, PromptFinished(outcome="failed", summary=message))
        return "failed"

    def _failure(self, job: PromptJob, exc: Exception) -> tuple[str, str]:
        """The code and message a prompt fails with: a failure a layer names keeps its message;
        anything else is a bug, logged with its trace."""
        if isinstance(exc, SandboxError):
            return "sandbox_error", str(exc)
        if isinstance(exc, ImagesError):
            # A cold start's environment (a declared image) that could not be pulled or built.
            return "image_error", str(exc)
        if isinstance(exc, GitOpsError):
            return exc.code, str(exc)
        if isinstance(exc, ForgeError):
            return "git_error", str(exc)
        log.exception("prompt %s of session %s failed", job.id, self.session_id)
        return "internal", f"internal error: {type(exc).__name__}: {exc}"

    async def _run_prompt(self, job: PromptJob) -> PromptOutcome:
        assert self.ctx is not None
        ctx = self.ctx
        self.current_job = job
        waited = int((time.time() - job.created_at) * 1000)
        await self.emit_for(job, PromptStarted(author=job.author, ms_waiting=waited))
        try:
            model = self.deps.models.get(ctx.model)
        except ModelNotConfigured as exc:
            return await self._fail(job, "model_not_configured", str(exc))
        try:
            kept_sandbox = self.sandbox.acquired is not None
            resumed = await self._resumed(job)
            acquired = await self.sandbox.ensure(job, ctx)
            await self.status("running", job=job)
            tool_ctx = ToolContext(
                session_id=self.session_id,
                sandbox=acquired.sandbox,
                control=self.deps.control,
                author=job.author,
                repo=acquired.spec or ctx.repo,
                config=self.deps.config,
                publish=self.emit,
                depth=ctx.depth,
                prompt_id=job.id,
                attempt=job.attempt,
                base=lambda: self.sandbox.base_sha,
            )
            user = ChatMessage(role="user", text=_user_text(job, ctx))
            result = await run_agent(
                tool_ctx,
                model,
                self._hooks,
                ctx.history,
                user,
                job.created_at,
                spent_usd=await self._spent_usd(),
                resumed=resumed,
                checkpoint=functools.partial(self.sandbox.checkpoint, job),
                kept_sandbox=kept_sandbox,
            )
            if result.outcome != "failed":
                # Commits stand on the synced base, like every write.
                await self.sandbox.synced(ctx.repo)
                await publish_work(
                    sandbox=acquired.sandbox,
                    base_sha=self.sandbox.base_sha,
                    ctx=ctx,
                    job=job,
                    result=result,
                    forge_for=self.deps.forge_for,
                    emit=self.emit,
                    max_push_bytes=self.deps.config.max_push_bytes,
                    editors=self._ide_editors,
                )
        except asyncio.CancelledError:
            raise
        except (ImagesError, WorkersError, IntegrationsError) as exc:
            return await self._fail(job, *self._failure(job, exc))
        except Exception as exc:
            # Last resort: hooks from plugins and embedders (`extra_hooks`) run on the model's
            # tool calls inside this prompt; a crash of theirs fails the prompt with its
            # message instead of killing the runner and leaving the session to its lease.
            return await self._fail(job, *self._failure(job, exc))
        await self.emit_for(job, PromptFinished(outcome=result.outcome, summary=result.summary))
        return result.outcome


def _user_text(job: PromptJob, ctx: SessionContext) -> str:
    if len({a.email for a in [*ctx.authors, job.author]}) > 1:
        return f"From {job.author.name} (@{job.author.login}):\n{job.text}"
    return job.text


async def run_session(session_id: str, deps: WorkerDeps) -> None:
    """The `run_session` task, under every dispatcher: drain a session's queue.

    A duplicate delivery (the lease is held elsewhere, or nothing is queued) returns at once
    without touching the session. Dispatchers run it through `Runners.run`, where stops and
    nudges find the runner.
    """
    await SessionRunner(session_id, deps).run()
