"""The desktop of a session's sandbox: open it (`POST`), watch or control it (WebSocket, RFB).

The WebSocket carries the VNC server's bytes as they are, for noVNC in the browser. It is
authenticated and checked exactly as the session's event stream is (token or cookie, the
cookie only from this site; the `OriginCheck` middleware refuses other sites' pages), and it
is view-only unless `control=true` is asked by a participant: the API then drops the client's
keyboard, mouse, clipboard and resize messages itself (`app/services/rfb.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketState

from app.api.deps import CurrentUser, DesktopsDep, StreamSlotsDep, WebSocketAdmission
from app.errors import ServiceError
from app.services.desktop import DesktopPublic
from app.services.rfb import ProtocolError, ViewOnly

router = APIRouter(prefix="/api/sessions", tags=["desktop"])
CHUNK = 64 * 1024
NOVNC_DIR = Path("/usr/share/novnc")
"""Debian's `novnc` package: the browser's VNC client, served read-only at `/novnc/`."""


def mount_novnc(app: FastAPI, directory: Path = NOVNC_DIR) -> None:
    """Serve noVNC's client library at `/novnc/core/` and `/novnc/vendor/` when the package is
    installed. Only the library: noVNC's own pages (`vnc.html`) connect wherever their address
    says, and have no business on this origin."""
    if (directory / "core" / "rfb.js").is_file():
        for part in ("core", "vendor"):
            app.mount(
                f"/novnc/{part}", StaticFiles(directory=directory / part), name=f"novnc-{part}"
            )


@router.post("/{session_id}/desktop")
async def open_desktop(session_id: str, user: CurrentUser, desktops: DesktopsDep) -> DesktopPublic:
    """Start a desktop (Xvfb, a window manager, x11vnc) in the session's live sandbox, or
    return the one running; 409 when the session has no live sandbox on this server."""
    return await desktops.open(session_id, user)


@router.websocket("/{session_id}/desktop")
async def desktop_socket(
    websocket: WebSocket,
    session_id: str,
    admission: WebSocketAdmission,
    desktops: DesktopsDep,
    slots: StreamSlotsDep,
    control: bool = False,
) -> None:
    """The desktop as RFB over binary frames (noVNC speaks it), view-only by default.

    `control=true` lets the caller's keyboard and mouse through, for the session's participants
    only, and records `desktop_control_taken`. A refused socket is accepted, then closed with
    4000 + the HTTP status and a reason: 4401, 4403, 4404, 4409 (no desktop running: `POST` this
    path first), or 4429 (NIGHTSHIFT_MAX_STREAMS_PER_USER).
    """
    try:
        user = admission.caller()
        assert user.id is not None
        slot = slots.acquire(user.id)
    except ServiceError as exc:
        await websocket.accept()
        await websocket.close(code=4000 + exc.status_code, reason=str(exc)[:120])
        return
    try:
        try:
            conn, attendance = await desktops.connect(session_id, user, control)
        except ServiceError as exc:
            await websocket.accept()
            await websocket.close(code=4000 + exc.status_code, reason=str(exc)[:120])
            return
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        try:
            with attendance.watching():
                await _relay(websocket, reader, writer, None if control else ViewOnly())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    finally:
        slot.release()


async def _relay(
    websocket: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    view_only: ViewOnly | None,
) -> None:
    """Carry bytes both ways until either side ends; a view-only client's input is dropped."""
    reason = ""

    async def upstream() -> None:
        nonlocal reason
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if not data:
                continue  # noVNC sends binary frames only; text has no meaning here
            if view_only is not None:
                try:
                    data = view_only.feed(data)
                except ProtocolError as exc:
                    reason = str(exc)
                    return
            if data:
                writer.write(data)
                await writer.drain()

    async def downstream() -> None:
        while chunk := await reader.read(CHUNK):
            await websocket.send_bytes(chunk)

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                if reason:
                    await websocket.close(code=1008, reason=reason[:120])
                else:
                    await websocket.close()
