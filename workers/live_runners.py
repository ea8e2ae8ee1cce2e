"""`Runners`: the session runners alive in this process, where stops, nudges and shutdown
find them."""

from __future__ import annotations

from images.sandboxes.base import Sandbox
from workers.runner import SessionRunner, WorkerDeps


class Runners:
    """The runners alive in this process, by session: where a stop request finds them."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[SessionRunner]] = {}

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_session.values())

    async def run(self, session_id: str, deps: WorkerDeps) -> None:
        """The `run_session` task (`workers.runner.run_session`), with its runner findable
        here while it runs."""
        runner = SessionRunner(session_id, deps)
        self._by_session.setdefault(session_id, set()).add(runner)
        try:
            await runner.run()
        finally:
            runners = self._by_session[session_id]
            runners.discard(runner)
            if not runners:
                del self._by_session[session_id]

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

    def sandbox_of(self, session_id: str) -> Sandbox | None:
        """The sandbox a live runner of the session holds here (desktops and IDEs run in it);
        None once the runner was asked to stop (its sandbox is on its way out)."""
        for runner in self._by_session.get(session_id, ()):
            acquired = runner.sandbox.acquired
            if acquired is not None and not (runner.stop_requested or runner.abandoned):
                sandbox: Sandbox = acquired.sandbox
                return sandbox
        return None

    def all(self) -> list[SessionRunner]:
        return [r for rs in self._by_session.values() for r in rs]

    def abandon_all(self) -> int:
        """Shutting down: every runner gives its session back (call on the runners' loop)."""
        runners = self.all()
        for runner in runners:
            runner.abandon()
        return len(runners)
