"""Shared links to artifacts: what a pull request shows where nobody is signed in (GitHub).

`/shared/artifacts/<session>/<sha256>/<token>` serves one PNG to anyone holding the link; the
token is an HMAC under the data dir's share key (`app/services/artifacts.py`), so a link cannot
be guessed or turned into another artifact's, and every wrong part answers the same 404. The
bytes were made by model-driven code: served as a PNG with `nosniff` and a sandboxing policy,
as the signed-in route does, and with no referrer sent on.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.deps import SettingsDep
from app.services.artifacts import Artifacts

router = APIRouter(prefix="/shared", tags=["sessions"])

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'",
    "Cache-Control": "public, max-age=86400",
    "Referrer-Policy": "no-referrer",
}


@router.get(
    "/artifacts/{session_id}/{artifact_id}/{token}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No such link"}},
)
async def get_shared_artifact(
    session_id: str,
    artifact_id: str,
    token: str,
    settings: SettingsDep,
) -> FileResponse:
    """A screenshot linked from a pull request: no sign-in, the link's token is the key."""
    path = await asyncio.to_thread(
        Artifacts.of(settings.data_dir).shared_path, session_id, artifact_id, token
    )
    return FileResponse(path, media_type="image/png", headers=HEADERS)
