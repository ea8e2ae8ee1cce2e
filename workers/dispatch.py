"""Dispatch: how the control plane asks for a session to be run or stopped."""

from __future__ import annotations

from typing import Protocol

from workers.executor import InProcessExecutor
from workers.runner import SessionRunner, WorkerDeps


class Dispatcher(Protocol):
    def run_session(self, session_id: str) -> None:
        """Make sure a runner drains this session's queue (idempotent)."""
        ...

    def stop_session(self, session_id: str) -> None:
        """Cancel the model stream and running command of this session's runner, if any."""
        ...


class InProcessDispatcher:
    """Runs sessions on the in-process executor; stop reaches the runner directly."""

    def __init__(self, executor: InProcessExecutor, deps: WorkerDeps) -> None:
        self.executor = executor
        self.deps = deps
        self.runners: dict[str, SessionRunner] = {}

    def run_session(self, session_id: str) -> None:
        existing = self.runners.get(session_id)
        if existing is not None and not existing.stop_requested:
            return  # the live runner checks the queue before it lets go of the lease

        async def job() -> None:
            runner = SessionRunner(session_id, self.deps)
            self.runners[session_id] = runner
            try:
                await runner.run()
            finally:
                if self.runners.get(session_id) is runner:
                    del self.runners[session_id]

        self.executor.submit(job)

    def stop_session(self, session_id: str) -> None:
        runner = self.runners.get(session_id)
        if runner is not None:
            self.executor.call(runner.request_stop)
