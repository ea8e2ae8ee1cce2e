"""The desktop of a session's live sandbox: started on request, reached by the API's WebSocket
proxy (`app/api/routes/desktop.py`), view-only unless a participant takes control.

The sandbox belongs to the session's runner, which runs on the in-process executor's loop, so
starting the desktop happens there; the proxy only opens the VNC socket the sandbox's x11vnc
listens on (`images/sandboxes/desktop.py`). A desktop lives as long as the sandbox: when the
runner lets the sandbox go, the desktop's command ends with it. Sessions that run on Celery
workers or on Modal have no sandbox on this host, and say so.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel
from sqlmodel import Session as DB

from app.errors import Conflict, Forbidden, NotFound
from app.models import Participant, User
from app.services.attendance import Attendance, stop_when_idle
from app.services.hub import EventHub
from app.services.sessions import Sessions
from images.sandboxes.base import Sandbox
from images.sandboxes.desktop import (
    DISPLAY,
    HEIGHT,
    WIDTH,
    Desktop,
    DesktopUnavailable,
    start_desktop,
)
from workers.events import DesktopControlTaken
from workers.executor import InProcessExecutor
from workers.live_runners import Runners


class DesktopPublic(BaseModel):
    """A running desktop, and where to watch it."""

    session_id: str
    sandbox_id: str
    display: str
    """The X display programs in the sandbox draw on (`DISPLAY=:99`)."""
    width: int
    height: int
    websocket: str
    """The path of the WebSocket that carries it (RFB); add `?control=true` to take control."""
    can_control: bool
    """Whether the caller may take control (the session's participants)."""
    started_at: float


class Desktops:
    """Desktops of the sessions whose sandboxes live in this process, by sandbox id."""

    def __init__(
        self,
        sessions: Sessions,
        hub: EventHub,
        executor: InProcessExecutor,
        runners: Runners | None,
        enabled: bool,
        idle_s: float,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.sessions = sessions
        self.hub = hub
        self.executor = executor
        self.runners = runners
        """The in-process runners; None in distributed mode (sandboxes live on workers)."""
        self.enabled = enabled
        """NIGHTSHIFT_DESKTOP: off, every path answers 404 naming the setting."""
        self.idle_s = idle_s
        self.start_timeout_s = start_timeout_s
        self._desktops: dict[str, Desktop] = {}
        self._attendance: dict[str, Attendance] = {}
        self._watchdogs: set[asyncio.Future[None]] = set()
        self._starting: dict[str, asyncio.Future[Desktop]] = {}

    def may_control(self, session_id: str, user: User) -> bool:
        """The session's participants (whoever prompted it) may take control."""
        assert user.id is not None
        with DB(self.sessions.engine) as db:
            return db.get(Participant, (session_id, user.id)) is not None

    async def open(self, session_id: str, user: User) -> DesktopPublic:
        """Start the desktop of the session's live sandbox, or return the one running."""
        self.check_enabled()
        row = await asyncio.to_thread(self.sessions.get, session_id)
        if self.runners is None:
            raise Conflict(
                "this session's sandbox runs on a worker, not on this server; the desktop "
                "needs the embedded mode (no NIGHTSHIFT_BROKER_URL)"
            )
        desktop = await self._on_loop(self._ensure(row.id))
        can_control = await asyncio.to_thread(self.may_control, session_id, user)
        return self._public(session_id, desktop, can_control)

    def check_enabled(self) -> None:
        if not self.enabled:
            raise NotFound(
                "the desktop is off on this server; the operator enables it with NIGHTSHIFT_DESKTOP=1"
            )

    def attendance(self, desktop: Desktop) -> Attendance:
        """The viewers of `desktop` (a WebSocket holds `watching()` while it is open)."""
        return self._attendance.setdefault(desktop.sandbox_id, Attendance(self.idle_s))

    async def _current(self, session_id: str) -> Desktop | str:
        """On the executor's loop: the session's running desktop, or why there is none."""
        sandbox = self._live_sandbox(session_id)
        desktop = self._desktops.get(sandbox.id) if sandbox is not None else None
        if desktop is None or not desktop.alive:
            return (
                f"session {session_id} has no desktop running: open it first "
                f"(POST /api/sessions/{session_id}/desktop)"
            )
        return desktop

    async def connect(
        self, session_id: str, user: User, control: bool
    ) -> tuple[socket.socket, Attendance]:
        """A connection to the session's desktop for `user`, and the desktop's viewers; taking
        control is recorded."""
        self.check_enabled()
        await asyncio.to_thread(self.sessions.get, session_id)
        if control and not await asyncio.to_thread(self.may_control, session_id, user):
            raise Forbidden(
                "only the session's participants (people who prompted it) may take control "
                "of its desktop; you can watch it"
            )
        desktop = await self._on_loop(self._current(session_id))
        try:
            conn = await asyncio.to_thread(desktop.connect)
        except (OSError, DesktopUnavailable) as exc:
            raise Conflict(f"the desktop of session {session_id} cannot be reached: {exc}") from exc
        if control:
            event = DesktopControlTaken(login=user.login, name=user.name)
            try:
                await asyncio.to_thread(self.hub.publish, session_id, event)
            except BaseException:
                conn.close()  # control that cannot be recorded is not given
                raise
        return conn, self.attendance(desktop)

    async def _on_loop(self, job: Coroutine[Any, Any, Desktop | str]) -> Desktop:
        """Run `job` on the runners' loop; a refusal comes back as text (the executor logs
        exceptions as failures) and is raised here as a Conflict."""
        outcome = await asyncio.wrap_future(self.executor.submit(lambda: job))
        if isinstance(outcome, str):
            raise Conflict(outcome)
        return outcome

    def _live_sandbox(self, session_id: str) -> Sandbox | None:
        return self.runners.sandbox_of(session_id) if self.runners is not None else None

    async def _ensure(self, session_id: str) -> Desktop | str:
        """On the executor's loop: the desktop of the session's sandbox, started if need be."""
        sandbox = self._live_sandbox(session_id)
        if sandbox is None:
            return (
                f"session {session_id} has no live sandbox: its desktop can be opened while a "
                "prompt runs or while the session waits for a follow-up "
                "(NIGHTSHIFT_IDLE_SECONDS keeps the sandbox that long)"
            )
        for key in [k for k, d in self._desktops.items() if not d.alive]:
            del self._desktops[key]
        running = self._desktops.get(sandbox.id)
        if running is not None:
            return running
        starting = self._starting.get(sandbox.id)
        if starting is None:
            starting = asyncio.ensure_future(start_desktop(sandbox, self.start_timeout_s))
            self._starting[sandbox.id] = starting
        try:
            desktop = await asyncio.shield(starting)
        except DesktopUnavailable as exc:
            return str(exc)
        finally:
            self._starting.pop(sandbox.id, None)
        self._desktops[sandbox.id] = desktop
        attendance = self._attendance[sandbox.id] = Attendance(self.idle_s)
        watchdog = asyncio.ensure_future(
            stop_when_idle(attendance, lambda: desktop.alive, desktop.stop)
        )
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)
        return desktop

    def _public(self, session_id: str, desktop: Desktop, can_control: bool) -> DesktopPublic:
        return DesktopPublic(
            session_id=session_id,
            sandbox_id=desktop.sandbox_id,
            display=DISPLAY,
            width=WIDTH,
            height=HEIGHT,
            websocket=f"/api/sessions/{session_id}/desktop",
            can_control=can_control,
            started_at=desktop.started_at or time.time(),
        )
