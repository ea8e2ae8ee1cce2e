"""VS Code in the browser: `POST /api/sessions/{id}/ide` starts code-server in the session's
sandbox and answers with a single-use link to it on the IDE's own origin, where
`app/api/ide_proxy.py` shows it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentUser, IdesDep
from app.services.ide import IdePublic

router = APIRouter(prefix="/api/sessions", tags=["ide"])


@router.post("/{session_id}/ide")
async def open_ide(session_id: str, user: CurrentUser, ides: IdesDep) -> IdePublic:
    """Start VS Code (code-server) on the session's workspace, or find it running, and return
    a link that opens it once, within a minute. 409 when it has no live sandbox (finished, or on a worker), 503 when code-server is not
    installed where the sandbox looks, 404 when the server does not offer the IDE."""
    return await ides.open(session_id, user)
