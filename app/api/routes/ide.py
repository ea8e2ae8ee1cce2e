"""VS Code in the browser: `POST /api/sessions/{id}/ide` starts code-server in the session's
sandbox and answers with a single-use link to it on the IDE's own origin, where
`app/api/ide_proxy.py` shows it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.api.deps import CurrentUser
from app.runtime import Runtime
from app.services.ide import IdePublic, Ides, ide_origin
from workers.dispatch import InProcessDispatcher

router = APIRouter(prefix="/api/sessions", tags=["ide"])


def build_ides(runtime: Runtime) -> Ides:
    """The IDE service of `runtime` (its runners, when sessions run in this process)."""
    dispatcher = runtime.dispatcher
    runners = dispatcher.runners if isinstance(dispatcher, InProcessDispatcher) else None
    settings = runtime.settings
    return Ides(
        runtime.sessions,
        runtime.hub,
        runtime.executor,
        runners,
        enabled=settings.ide,
        command=settings.ide_command,
        origin=ide_origin(settings),
        idle_s=settings.ide_idle_seconds,
    )


def get_ides(request: Request) -> Ides:
    ides: Ides = request.app.state.ides
    return ides


IdesDep = Annotated[Ides, Depends(get_ides)]


@router.post("/{session_id}/ide")
async def open_ide(session_id: str, user: CurrentUser, ides: IdesDep) -> IdePublic:
    """Start VS Code (code-server) on the session's workspace, or find it running, and return
    a link that opens it once, within a minute. 409 when it has no live sandbox (finished, or on a worker), 503 when code-server is not
    installed where the sandbox looks, 404 when the server does not offer the IDE."""
    return await ides.open(session_id, user)
