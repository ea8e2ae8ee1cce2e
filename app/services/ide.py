"""VS Code in the browser for a session's live sandbox: started on request, reached only through
the IDE origin's proxy (`app/api/ide_proxy.py`), and whoever edits there co-authors the next
commit.

Who may open it: whoever may send the session a follow-up, since that already changes its
workspace (through the agent); what they change here is credited to them. Opening it returns a ticket: a single-use token, good for
`TICKET_TTL_S`, in a URL on the IDE's own origin (NIGHTSHIFT_IDE_ORIGIN), which the IDE origin
exchanges for an HttpOnly cookie scoped to that session's path. code-server's pages, which the
sandbox can rewrite, so run on an origin that holds none of the API's credentials.

While it runs, the workspace's tree is compared every `check_s` seconds (`images/sandboxes/
ide.py` `edits`); files that changed while people used the IDE become an `ide_files_edited`
event naming them, and `workers/publish.py` reads those events to add `Co-authored-by:`.
The runner commits everything in the workspace, so if the agent writes in the same few seconds
its files are listed too: the credit is by time, not by keystroke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from app.errors import Conflict, Forbidden, NotFound, Unavailable
from app.models import User
from app.services.attendance import Attendance
from app.services.hub import EventHub
from app.services.sessions import Sessions
from app.settings import Settings
from app.settings_sandbox import SESSION
from images.sandboxes.base import Sandbox, SandboxError
from images.sandboxes.ide import MAX_FILES, Ide, IdeNotInstalled, IdeUnavailable, edits, start_ide
from workers.events import Author, IdeFilesEdited
from workers.executor import InProcessExecutor
from workers.live_runners import Runners

log = logging.getLogger(__name__)
TICKET_TTL_S = 60.0
PASS_TTL_S = 12 * 3600.0
"""How long the IDE origin's cookie lets its holder in (access is checked again each time)."""
ENDED = ("finished", "failed", "stopped")


class IdePublic(BaseModel):
    """A running IDE, and the one-time address that opens it."""

    session_id: str
    sandbox_id: str
    url: str
    """Open this in the browser within `expires_in` seconds; it works once."""
    expires_in: float
    started_at: float
    ready_s: float
    """Seconds code-server took to answer on its socket."""


@dataclass
class Pass:
    """What a ticket or the IDE origin's cookie stands for."""

    session_id: str
    user: User
    expires: float


@dataclass
class Running:
    """An IDE, its viewers, and who used it since the workspace was last read."""

    ide: Ide
    attendance: Attendance
    tree: str = ""
    used_by: dict[int, User] = field(default_factory=dict)


class Ides:
    """The IDEs of the sessions whose sandboxes live in this process, by sandbox id."""

    def __init__(
        self,
        sessions: Sessions,
        hub: EventHub,
        executor: InProcessExecutor,
        runners: Runners | None,
        *,
        enabled: bool,
        command: str,
        origin: str,
        idle_s: float,
        check_s: float = 3.0,
        start_timeout_s: float = 60.0,
        ticket_ttl_s: float = TICKET_TTL_S,
    ) -> None:
        self.sessions = sessions
        self.hub = hub
        self.executor = executor
        self.runners = runners
        """The in-process runners; None in distributed mode (sandboxes live on workers)."""
        self.enabled = enabled
        self.command = command
        self.origin = origin
        """The IDE origin (`http://host:port`, or `http://{session}.host:port`), where tickets
        are redeemed and code-server shown."""
        self.idle_s = idle_s
        self.check_s = check_s
        self.start_timeout_s = start_timeout_s
        self.ticket_ttl_s = ticket_ttl_s
        self._running: dict[str, Running] = {}
        self._starting: dict[str, asyncio.Future[Ide]] = {}
        self._tickets: dict[str, Pass] = {}
        self._passes: dict[str, Pass] = {}
        self._watchdogs: set[asyncio.Future[None]] = set()

    def check_enabled(self) -> None:
        if not self.enabled:
            raise NotFound(
                "the IDE is off on this server; the operator enables it with NIGHTSHIFT_IDE=1"
            )

    async def open(self, session_id: str, user: User) -> IdePublic:
        """Start code-server in the session's live sandbox (or find it running) and issue a
        ticket for `user` to open it on the IDE origin. Whoever may send the session a
        follow-up (any signed-in person) may edit its workspace here: 404 only for no such
        session; 409 for one that ended or has no live sandbox here."""
        self.check_enabled()
        row = await asyncio.to_thread(self.sessions.get, session_id)
        if row.status in ENDED:
            raise Conflict(
                f"session {session_id} has {row.status}: its sandbox is gone, so there is no "
                "workspace to open; a follow-up prompt starts it again"
            )
        if self.runners is None:
            raise Conflict(
                "this session's sandbox runs on a worker, not on this server; the IDE needs "
                "the embedded mode (no NIGHTSHIFT_BROKER_URL)"
            )
        outcome = await asyncio.wrap_future(self.executor.submit(lambda: self._ensure(row.id)))
        if isinstance(outcome, IdeNotInstalled):
            raise Unavailable(
                f"{outcome}; on the host `make ide` installs code-server in /usr/local/bin "
                f"(NIGHTSHIFT_IDE_COMMAND={self.command!r}), a declared image must carry it"
            )
        if isinstance(outcome, str):
            raise Conflict(outcome)
        return IdePublic(
            session_id=session_id,
            sandbox_id=outcome.sandbox_id,
            url=f"{self.origin_for(session_id)}{path_of(session_id)}"
            f"?ticket={self.issue(session_id, user)}",
            expires_in=self.ticket_ttl_s,
            started_at=outcome.started_at,
            ready_s=round(outcome.ready_s, 3),
        )

    def origin_for(self, session_id: str) -> str:
        """Where the session's IDE is shown: the IDE origin, or the session's own host under it
        when NIGHTSHIFT_IDE_ORIGIN names `{session}`."""
        return self.origin.replace(SESSION, session_id)

    def issue(self, session_id: str, user: User) -> str:
        """A ticket that lets `user` into the session's IDE once, for `ticket_ttl_s`."""
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = Pass(session_id, user, time.monotonic() + self.ticket_ttl_s)
        return ticket

    def redeem(self, session_id: str, ticket: str) -> tuple[str, Pass]:
        """Exchange a ticket (once, before it expires, for its own session) for a pass: the
        value of the IDE origin's cookie."""
        issued = self._tickets.pop(ticket, None)
        now = time.monotonic()
        for issued_or_granted in (self._tickets, self._passes):
            for key in [k for k, p in issued_or_granted.items() if p.expires < now]:
                del issued_or_granted[key]
        if issued is None or issued.expires < now or issued.session_id != session_id:
            raise Forbidden(
                "this IDE link is used, expired or for another session: open the IDE again "
                "from the session's page"
            )
        token = secrets.token_urlsafe(32)
        granted = Pass(session_id, issued.user, now + PASS_TTL_S)
        self._passes[token] = granted
        return token, granted

    async def admit(self, session_id: str, cookie: str | None) -> tuple[User, Running]:
        """The person behind the IDE origin's cookie and the session's running IDE; 403 for no
        valid pass to this session, 409 when no IDE runs."""
        granted = self._passes.get(cookie or "")
        if granted is None or granted.session_id != session_id:
            raise Forbidden(
                "no access to this session's IDE: open it from the session's page "
                "(its link is good once)"
            )
        if granted.expires < time.monotonic():
            self._passes.pop(cookie or "", None)
            raise Forbidden("this IDE pass has expired: open the IDE again from the session")
        running = await self._on_loop(self._current(session_id))
        return granted.user, running

    def used(self, running: Running, user: User) -> None:
        """`user` did something through the IDE just now (a request, a message)."""
        assert user.id is not None
        running.attendance.touch()
        running.used_by[user.id] = user

    async def _on_loop(self, job: Coroutine[Any, Any, Running | str]) -> Running:
        outcome = await asyncio.wrap_future(self.executor.submit(lambda: job))
        if isinstance(outcome, str):
            raise Conflict(outcome)
        return outcome

    async def _current(self, session_id: str) -> Running | str:
        sandbox = self._live_sandbox(session_id)
        running = self._running.get(sandbox.id) if sandbox is not None else None
        if running is None or not running.ide.alive:
            return (
                f"session {session_id} has no IDE running: open it first "
                f"(POST /api/sessions/{session_id}/ide)"
            )
        return running

    def _live_sandbox(self, session_id: str) -> Sandbox | None:
        return self.runners.sandbox_of(session_id) if self.runners is not None else None

    async def _ensure(self, session_id: str) -> Ide | IdeNotInstalled | str:
        """On the executor's loop: the IDE of the session's sandbox, started if need be;
        otherwise why not (refusals come back as values: the executor logs exceptions)."""
        sandbox = self._live_sandbox(session_id)
        if sandbox is None:
            return (
                f"session {session_id} has no live sandbox: its IDE can be opened while a "
                "prompt runs or while the session waits for a follow-up "
                "(NIGHTSHIFT_IDLE_SECONDS keeps the sandbox that long)"
            )
        for key in [k for k, r in self._running.items() if not r.ide.alive]:
            del self._running[key]
        running = self._running.get(sandbox.id)
        if running is not None:
            return running.ide
        starting = self._starting.get(sandbox.id)
        if starting is None:
            starting = asyncio.ensure_future(start_ide(sandbox, self.command, self.start_timeout_s))
            self._starting[sandbox.id] = starting
        try:
            ide = await asyncio.shield(starting)
        except IdeNotInstalled as exc:
            return exc
        except IdeUnavailable as exc:
            return str(exc)
        finally:
            self._starting.pop(sandbox.id, None)
        if sandbox.id in self._running:  # another request finished starting it
            return self._running[sandbox.id].ide
        running = self._running[sandbox.id] = Running(ide, Attendance(self.idle_s))
        with contextlib.suppress(SandboxError):  # not a git workspace: edits are not followed
            running.tree, _ = await edits(sandbox, "")
        watchdog = asyncio.ensure_future(self._watch(session_id, running))
        self._watchdogs.add(watchdog)
        watchdog.add_done_callback(self._watchdogs.discard)
        return ide

    async def _watch(self, session_id: str, running: Running) -> None:
        """Until the IDE ends: record who changed what, and stop it once no one uses it."""
        while running.ide.alive:
            await asyncio.sleep(self.check_s)
            try:
                await self._record_edits(session_id, running)
            except Exception:  # a failed reading must not keep an unused IDE running
                log.exception("reading the IDE's edits in session %s failed", session_id)
            if running.attendance.idle():
                await running.ide.stop()
        self._running.pop(running.ide.sandbox_id, None)

    async def _record_edits(self, session_id: str, running: Running) -> None:
        if not running.tree or not running.ide.alive:
            return
        tree, files = await edits(running.ide.sandbox, running.tree)
        users, running.used_by = list(running.used_by.values()), {}
        running.tree = tree
        if not files or not users:
            return
        for user in users:
            assert user.id is not None
            event = IdeFilesEdited(
                author=Author(id=user.id, login=user.login, name=user.name, email=user.email),
                files=files[:MAX_FILES],
                more=max(0, len(files) - MAX_FILES),
            )
            await asyncio.to_thread(self.hub.publish, session_id, event)


def path_of(session_id: str) -> str:
    """Where the IDE origin shows a session's IDE (and scopes its cookie)."""
    return f"/api/sessions/{session_id}/ide/"


def ide_origin(settings: Settings) -> str:
    """NIGHTSHIFT_IDE_ORIGIN, or the API's scheme and host on NIGHTSHIFT_IDE_PORT."""
    if settings.ide_origin:
        return settings.ide_origin
    parts = urlsplit(settings.base_url)
    host = parts.hostname or settings.host
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or 'http'}://{host}:{settings.ide_port}"
