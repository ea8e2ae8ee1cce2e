"""Sessions: create, list, read, follow up, stop, events (JSON, WebSocket, SSE), diff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    HTTPException,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketState

from app.api.deps import (
    CurrentUser,
    ForgeForDep,
    HubDep,
    PresenceDep,
    ReposDep,
    SessionsDep,
    StreamSlotsDep,
    StreamUser,
    WebSocketAdmission,
    current_user,
)
from app.api.sse import event_stream, frame
from app.errors import ServiceError
from app.models import User
from app.schemas import (
    ROW_MAX,
    DiffPublic,
    EventPublic,
    PresencePublic,
    PromptCreate,
    PromptPublic,
    SessionCreate,
    SessionList,
    SessionPublic,
)
from app.services.hub import EventHub
from app.services.presence import Presence
from app.services.repo_catalog import spec_of
from integrations.forge.base import ForgeError
from workers.events import Event, SessionStatus

PREFIX = "/api/sessions"
api = APIRouter(prefix=PREFIX, tags=["sessions"], dependencies=[Depends(current_user)])
streams = APIRouter(prefix=PREFIX, tags=["sessions"])
"""Event streams authenticate themselves: a stream may also pass its token as `?token=`."""


@api.post("", status_code=status.HTTP_201_CREATED)
def create_session(body: SessionCreate, user: CurrentUser, sessions: SessionsDep) -> SessionPublic:
    """Start a session on a repo with a first prompt (queued at once, run by a worker), on
    `model` (one of `GET /api/models`; the default when omitted)."""
    row = sessions.create(user, body.repo, body.prompt, body.parent_id, model=body.model)
    return sessions.public_new(row, user)


@api.get("")
def list_sessions(
    sessions: SessionsDep,
    repo: str | None = None,
    status_: Annotated[SessionStatus | None, Query(alias="status")] = None,
    author: Annotated[str | None, Query(description="The author's login")] = None,
    parent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=ROW_MAX)] = 0,
) -> SessionList:
    rows, total = sessions.query(
        repo=repo, status=status_, author=author, parent_id=parent_id, limit=limit, offset=offset
    )
    return SessionList(sessions=sessions.public_many(rows), total=total)


@api.get("/{session_id}")
def get_session(session_id: str, sessions: SessionsDep) -> SessionPublic:
    return sessions.public(sessions.get(session_id))


@api.get("/{session_id}/prompts")
def list_prompts(session_id: str, sessions: SessionsDep) -> list[PromptPublic]:
    """The session's prompts in order, with authors, states and queue positions."""
    return sessions.prompts(session_id)


@api.post("/{session_id}/prompts", status_code=status.HTTP_202_ACCEPTED)
def add_prompt(
    session_id: str, body: PromptCreate, user: CurrentUser, sessions: SessionsDep
) -> PromptPublic:
    """Queue a follow-up, attributed to the caller; it runs after the prompts ahead of it."""
    return sessions.add_prompt(user, session_id, body.text)


@api.post("/{session_id}/stop")
def stop_session(session_id: str, user: CurrentUser, sessions: SessionsDep) -> SessionPublic:
    """Stop now: cancel the model stream, kill the running command, drop queued prompts."""
    return sessions.public(sessions.stop(user, session_id))


@api.get("/{session_id}/events")
def list_events(
    session_id: str,
    sessions: SessionsDep,
    after: Annotated[int, Query(ge=0, le=ROW_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[dict[str, Any]]:
    """Stored events with id > `after`, oldest first (see `EventPublic` and `workers/events.py`)."""
    return [e.model_dump(mode="json") for e in sessions.events(session_id, after, limit)]


@api.get("/{session_id}/diff")
async def get_diff(
    session_id: str, sessions: SessionsDep, repos: ReposDep, forge_for: ForgeForDep
) -> DiffPublic:
    """The pushed branch against the repo's base branch."""
    row = await asyncio.to_thread(sessions.get, session_id)
    repo = await asyncio.to_thread(repos.by_id, row.repo_id)
    if not row.head_sha:
        return DiffPublic(base=repo.base, head=None, branch=row.branch, diff="")
    try:
        text = await forge_for(spec_of(repo)).diff(repo.url, repo.base, row.head_sha)
    except ForgeError as exc:
        raise HTTPException(502, str(exc)) from exc
    return DiffPublic(base=repo.base, head=row.head_sha, branch=row.branch, diff=text)


@streams.websocket("/{session_id}/stream")
async def stream_events(
    websocket: WebSocket,
    session_id: str,
    admission: WebSocketAdmission,
    sessions: SessionsDep,
    hub: HubDep,
    viewing: PresenceDep,
    slots: StreamSlotsDep,
    after: int = 0,
    presence: bool = False,
) -> None:
    """Every event with id > `after` as JSON text frames: stored ones, then live ones.

    With `presence=true` the stream also carries frames `{"type": "presence", "session_id",
    "viewers": [...]}` whenever who is viewing changes; they have no `id` and are not events.
    Every open stream counts its user as viewing the session. A refused stream is accepted,
    then closed with code 4000 + the HTTP status and a reason: 4401, 4404, or 4429 when the
    caller already holds NIGHTSHIFT_MAX_STREAMS_PER_USER streams here.
    """
    try:
        user = admission.caller()
        await asyncio.to_thread(sessions.check, session_id)
        assert user.id is not None
        slot = slots.acquire(user.id)
    except ServiceError as exc:
        # Accept first so the client sees the close code (4401, 4404) and reason, not a bare 403.
        await websocket.accept()
        await websocket.close(code=4000 + exc.status_code, reason=str(exc)[:120])
        return
    try:
        await _serve_stream(websocket, hub, viewing, session_id, user, after, presence)
    finally:
        slot.release()


async def _serve_stream(
    websocket: WebSocket,
    hub: EventHub,
    viewing: Presence,
    session_id: str,
    user: User,
    after: int,
    presence: bool,
) -> None:
    await websocket.accept()
    send_lock = asyncio.Lock()

    async def send(text: str) -> None:
        async with send_lock:  # two pumps share one socket; frames must not interleave
            await websocket.send_text(text)

    events = hub.stream(session_id, min(max(after, 0), ROW_MAX))

    async def pump_events() -> None:
        async for event in events:
            await send(event.model_dump_json())

    async def pump_presence() -> None:
        async for viewers in viewing.watch(session_id):
            frame = PresencePublic(session_id=session_id, viewers=viewers)
            await send(frame.model_dump_json())

    async def receive() -> None:
        # Clients may send keepalives; reading is also how a closed socket is noticed at once.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    key = viewing.join(session_id, user)
    tasks = [asyncio.create_task(pump_events()), asyncio.create_task(receive())]
    if presence:
        tasks.append(asyncio.create_task(pump_presence()))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        viewing.leave(session_id, key)
        for task in tasks:
            task.cancel()
        # A send to a socket the client closed raises; either way this stream is over.
        await asyncio.gather(*tasks, return_exceptions=True)
        await events.aclose()
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await websocket.close()


async def _event_frames(events: list[Event]) -> AsyncIterator[str]:
    for event in events:
        yield frame(event.model_dump_json(), event.type, event.id)


@streams.get(
    "/{session_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events_sse(
    session_id: str,
    request: Request,
    user: StreamUser,
    sessions: SessionsDep,
    hub: HubDep,
    slots: StreamSlotsDep,
    after: Annotated[int, Query(ge=0, le=ROW_MAX)] = 0,
) -> StreamingResponse:
    """Server-sent events, for clients without WebSocket; honours `Last-Event-ID`. 429 when
    the caller already holds NIGHTSHIFT_MAX_STREAMS_PER_USER streams here."""
    await asyncio.to_thread(sessions.check, session_id)
    assert user.id is not None
    slot = slots.acquire(user.id)
    last = request.headers.get("last-event-id", "")
    # Headers arrive as latin-1: "²".isdigit() holds, but it is no id.
    resumable = last.isascii() and last.isdigit() and int(last) <= ROW_MAX
    start = int(last) if resumable else after
    return event_stream(hub.stream(session_id, start), _event_frames, slot)


router = APIRouter()
router.include_router(api)
router.include_router(streams)

__all__ = ["EventPublic", "router"]
