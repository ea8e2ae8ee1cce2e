"""Artifacts of a session (screenshots its agent took), for people who can see the session.

The bytes were made by model-driven code, so they are served as what they were checked to be
and nothing more: `image/png`, `nosniff`, and a content-security-policy sandbox, so even a
browser told to open one as a page runs nothing from it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from app.api.deps import SessionsDep, SettingsDep, current_user
from app.services.artifacts import Artifacts

router = APIRouter(prefix="/api/sessions", tags=["sessions"], dependencies=[Depends(current_user)])

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'",
    "Cache-Control": "private, max-age=31536000, immutable",
}


@router.get(
    "/{session_id}/artifacts/{artifact_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No such artifact"}},
)
async def get_artifact(
    session_id: str, artifact_id: str, sessions: SessionsDep, settings: SettingsDep
) -> FileResponse:
    """A screenshot the session's agent took (its id is the SHA-256 of the PNG); 404 for an
    artifact of any other session."""
    await asyncio.to_thread(sessions.check, session_id)
    path = await asyncio.to_thread(Artifacts.of(settings.data_dir).path, session_id, artifact_id)
    return FileResponse(path, media_type="image/png", headers=HEADERS)
