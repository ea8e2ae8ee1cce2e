"""Live views for the web viewer: every session's changes as they happen, and presence for
clients that are not on the session's WebSocket (SSE or polling fallbacks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, status
from fastapi.responses import StreamingResponse

from app.api.deps import (
    CurrentUser,
    HubDep,
    PresenceDep,
    SessionsDep,
    StreamSlotsDep,
    StreamUser,
    current_user,
)
from app.api.sse import event_stream, frame
from app.errors import ServiceError
from app.schemas import PresenceBeat, PresencePublic
from workers.events import Event

PREFIX = "/api/sessions"
api = APIRouter(prefix=PREFIX, tags=["sessions"], dependencies=[Depends(current_user)])
streams = APIRouter(prefix=PREFIX, tags=["sessions"])
"""Event streams authenticate themselves: a stream may also pass its token as `?token=`."""
CHANGES = frozenset(
    {"status", "prompt_queued", "branch_pushed", "pr_opened", "pr_state", "child_spawned"}
)
"""Event types that change what a sessions list shows."""


@streams.get(
    "/changes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def session_changes(
    user: StreamUser, sessions: SessionsDep, hub: HubDep, slots: StreamSlotsDep
) -> StreamingResponse:
    """Server-sent events: `event: session` with the session (as `GET /api/sessions/{id}`
    returns it) whenever any session is created or changes status, gets a prompt, a branch,
    a PR or a PR state, or spawns a child. For live lists; not resumable (reload the list)."""
    assert user.id is not None
    slot = slots.acquire(user.id)

    async def frames(burst: list[tuple[str, Event]]) -> AsyncIterator[str]:
        changed = dict.fromkeys(session_id for session_id, _ in burst)  # one frame per session
        for session_id in changed:
            try:
                row = await asyncio.to_thread(sessions.get, session_id)
                public = await asyncio.to_thread(sessions.public, row)
            except ServiceError:
                continue
            yield frame(public.model_dump_json(), "session")

    return event_stream(hub.watch(types=CHANGES), frames, slot)


@api.get("/{session_id}/presence")
def get_presence(session_id: str, sessions: SessionsDep, presence: PresenceDep) -> PresencePublic:
    """Who is viewing the session now (open streams and recent heartbeats)."""
    sessions.get(session_id)
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
    sessions.get(session_id)
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
