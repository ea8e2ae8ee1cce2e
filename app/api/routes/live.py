"""Live views for the web viewer: every session's changes as they happen, and presence for
clients that are not on the session's WebSocket (SSE or polling fallbacks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import APIRouter, Depends, status
from fastapi.responses import StreamingResponse

from app.api.deps import (
    CurrentUser,
    HubDep,
    PeersDep,
    PresenceDep,
    SessionsDep,
    StreamSlotsDep,
    StreamUser,
    current_user,
)
from app.api.sse import event_stream, frame
from app.errors import ServiceError
from app.schemas import PresenceBeat, PresencePublic
from app.services.sessions import Sessions
from workers.events import Event

PREFIX = "/api/sessions"
api = APIRouter(prefix=PREFIX, tags=["sessions"], dependencies=[Depends(current_user)])
streams = APIRouter(prefix=PREFIX, tags=["sessions"])
"""Event streams authenticate themselves: a stream may also pass its token as `?token=`."""
CHANGES = frozenset(
    {"status", "prompt_queued", "branch_pushed", "pr_opened", "pr_state", "child_spawned"}
)
"""Event types that change what a sessions list shows."""
POLL_S = 1.0
SKEW_S = 5.0


@streams.get(
    "/changes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def session_changes(
    user: StreamUser,
    sessions: SessionsDep,
    hub: HubDep,
    slots: StreamSlotsDep,
    peers: PeersDep,
) -> StreamingResponse:
    """Server-sent events: `event: session` with the session (as `GET /api/sessions/{id}`
    returns it) whenever any session is created or changes status, gets a prompt, a branch,
    a PR or a PR state, or spawns a child. For live lists; not resumable (reload the list)."""
    assert user.id is not None
    slot = slots.acquire(user.id)

    async def frames(burst: list[str]) -> AsyncIterator[str]:
        for session_id in dict.fromkeys(burst):  # one frame per session
            try:
                row = await asyncio.to_thread(sessions.get, session_id)
                public = await asyncio.to_thread(sessions.public, row)
            except ServiceError:
                continue
            yield frame(public.model_dump_json(), "session")

    local = _ids(hub.watch(types=CHANGES))
    if peers is None:
        return event_stream(local, frames, slot)
    # Several API processes: this one's hub sees its own sessions' events only.
    return event_stream(_merged(local, _polled(sessions, peers.owners.holds)), frames, slot)


async def _ids(events: AsyncGenerator[tuple[str, Event], None]) -> AsyncGenerator[str, None]:
    try:
        async for session_id, _ in events:
            yield session_id
    finally:
        await events.aclose()


async def _polled(sessions: Sessions, ours: Callable[[str], bool]) -> AsyncGenerator[str, None]:
    """Sessions of other processes (not `ours`) whose index row changed, read from the control
    DB every POLL_S seconds. The window overlaps by SKEW_S for other hosts' clocks; a change
    is sent once."""
    seen: dict[str, float] = {}
    since = time.time() - SKEW_S
    while True:
        await asyncio.sleep(POLL_S)
        for session_id, at in await asyncio.to_thread(sessions.changed_since, since):
            if seen.get(session_id, 0.0) < at and not ours(session_id):
                seen[session_id] = at
                yield session_id
        since = time.time() - SKEW_S
        seen = {k: v for k, v in seen.items() if v > since}


async def _merged(*sources: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def pump(source: AsyncGenerator[str, None]) -> None:
        async for item in source:
            await queue.put(item)

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for source in sources:
            await source.aclose()


@api.get("/{session_id}/presence")
def get_presence(session_id: str, sessions: SessionsDep, presence: PresenceDep) -> PresencePublic:
    """Who is viewing the session now (open streams and recent heartbeats)."""
    sessions.check(session_id)
    return PresencePublic(session_id=session_id, viewers=presence.viewers(session_id))


@api.post("/{session_id}/presence")
def beat_presence(
    session_id: str,
    body: PresenceBeat,
    user: CurrentUser,
    sessions: SessionsDep,
    presence: PresenceDep,
) -> PresencePublic:
    """A heartbeat from a viewer on SSE or polling: counts the caller as viewing for 30 s."""
    sessions.check(session_id)
    viewers = presence.heartbeat(session_id, user, body.client_id)
    return PresencePublic(session_id=session_id, viewers=viewers)


@api.delete("/{session_id}/presence/{client_id}", status_code=status.HTTP_204_NO_CONTENT)
def leave_presence(
    session_id: str, client_id: str, user: CurrentUser, presence: PresenceDep
) -> None:
    """The viewer left (the page sends this when it closes)."""
    presence.leave_client(session_id, user, client_id)


router = APIRouter()
router.include_router(streams)
router.include_router(api)
