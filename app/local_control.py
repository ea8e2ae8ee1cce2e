"""The control-plane port (`workers.control.ControlPlane`) implemented in-process."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from app.control_jobs import ControlJobs
from app.errors import ServiceError
from app.services.artifacts import Artifacts
from app.services.repo_catalog import spec_of
from app.services.runners import RunnerService
from images.spec import RepoSpec
from workers.control import (
    ArtifactStored,
    LeaseState,
    PromptJob,
    RunStart,
    SessionContext,
    SessionSummary,
)
from workers.errors import ControlPlaneError
from workers.events import Author, Event

T = TypeVar("T")


class LocalControlPlane:
    def __init__(self, runners: RunnerService, jobs: ControlJobs, data_dir: Path) -> None:
        self.runners = runners
        self.jobs = jobs
        self.artifacts = Artifacts.of(data_dir)
        self._renewals: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            dict[tuple[str, str, float], list[asyncio.Future[LeaseState]]],
        ] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except ServiceError as exc:
            raise ControlPlaneError(str(exc)) from exc

    async def acquire_lease(self, session_id: str, runner_id: str, ttl_s: float) -> bool:
        return await self._call(lambda: self.runners.acquire_lease(session_id, runner_id, ttl_s))

    async def start_run(self, session_id: str, runner_id: str, ttl_s: float) -> RunStart:
        return await self._call(lambda: self.runners.start_run(session_id, runner_id, ttl_s))

    async def renew_lease(self, session_id: str, runner_id: str, ttl_s: float) -> LeaseState:
        """Heartbeats of one loop's runners come on the same tick (`workers/runner.py`): they
        are gathered until the loop has run them all, then renewed in one statement from one
        thread, instead of a thread and a transaction each."""
        loop = asyncio.get_running_loop()
        batch = self._renewals.get(loop)
        if batch is None:
            batch = self._renewals[loop] = {}
            loop.call_soon(self._start_renewal, loop)
        answer: asyncio.Future[LeaseState] = loop.create_future()
        batch.setdefault((session_id, runner_id, ttl_s), []).append(answer)
        return await answer

    def _start_renewal(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._renew(loop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._renewals.pop(loop, {})
        keys = {(sid, runner): ttl for sid, runner, ttl in batch}
        try:
            answers = await self._call(lambda: self.runners.renew_leases(keys))
        except Exception as exc:  # each runner hears it, as from its own call
            for waiters in batch.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            return
        for (sid, runner, _ttl), waiters in batch.items():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(answers[(sid, runner)])

    async def release_lease(self, session_id: str, runner_id: str) -> bool:
        return await self._call(lambda: self.runners.release_lease(session_id, runner_id))

    async def next_prompt(self, session_id: str, runner_id: str) -> PromptJob | None:
        return await self._call(lambda: self.runners.next_prompt(session_id, runner_id))

    async def session_context(self, session_id: str) -> SessionContext:
        return await self._call(lambda: self.runners.context(session_id))

    async def stored_events(
        self, session_id: str, types: list[str], prompt_id: int | None = None
    ) -> list[Event]:
        return await self._call(lambda: self.runners.stored_events(session_id, types, prompt_id))

    async def spawn_session(
        self,
        parent_id: str,
        repo: str | None,
        prompt: str,
        author: Author,
        model: str | None = None,
    ) -> str:
        return await self._call(lambda: self.runners.spawn(parent_id, repo, prompt, author, model))

    async def session_status(self, session_id: str) -> SessionSummary:
        return await self._call(lambda: self.runners.summary(session_id))

    async def store_artifact(self, session_id: str, data: bytes) -> ArtifactStored:
        def store() -> ArtifactStored:
            self.runners.sessions.get(session_id)  # NotFound for a session that is not there
            return self.artifacts.store(session_id, data)

        return await self._call(store)

    async def repo_specs(self) -> list[RepoSpec]:
        return await self._call(lambda: [spec_of(r) for r in self.runners.sessions.repos.list()])

    async def run_job(self, name: str) -> str:
        return await self._call(lambda: self.jobs.run(name))

    async def aclose(self) -> None:
        """Nothing to close: its services belong to the API process."""
