"""Live views for the web viewer: every session's changes as they happen, and presence for
clients that are not on the session's WebSocket (SSE or polling fallbacks)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from app.api.deps import CurrentUser, RuntimeDep, SessionsDep, stream_user
from app.errors import ServiceError
from app.schemas import PresenceBeat, PresencePublic
from workers.events import Event

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
KEEPALIVE_S = 15.0
CHANGES = frozenset(
    {"status", "prompt_queued", "branch_pushed", "pr_opened", "pr_state", "child_spawned"}
)
"""Event types that change what a sessions list shows."""


@router.get(
    "/changes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def session_changes(request: Request, runtime: RuntimeDep) -> StreamingResponse:
    """Server-sent events: `event: session` with the session (as `GET /api/sessions/{id}`
    returns it) whenever any session is created or changes status, gets a prompt, a branch,
    a PR or a PR state, or spawns a child. For live lists; not resumable (reload the list)."""
    try:
        user = await asyncio.to_thread(stream_user, request, runtime)
        assert user.id is not None
        slot = runtime.stream_slots.acquire(user.id)
    except ServiceError as exc:
        raise HTTPException(exc.status_code, str(exc)) from exc

    async def body() -> AsyncIterator[str]:
        changes = runtime.hub.watch(types=CHANGES)
        queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue(maxsize=1000)

        async def pump() -> None:
            async for item in changes:
                await queue.put(item)

        task = asyncio.create_task(pump())
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    first, _ = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                changed = {first: None}  # a burst of one session's events is sent once
                while not queue.empty():
                    changed[queue.get_nowait()[0]] = None
                for session_id in changed:
                    try:
                        row = await asyncio.to_thread(runtime.sessions.get, session_id)
                        public = await asyncio.to_thread(runtime.sessions.public, row)
                    except ServiceError:
                        continue
                    yield f"event: session\ndata: {public.model_dump_json()}\n\n"
        finally:
            slot.release()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await changes.aclose()

    stream = body()
    weakref.finalize(stream, slot.release)  # also when the response never starts its body
    return StreamingResponse(
        stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/{session_id}/presence")
def get_presence(session_id: str, user: CurrentUser, runtime: RuntimeDep) -> PresencePublic:
    """Who is viewing the session now (open streams and recent heartbeats)."""
    runtime.sessions.get(session_id)
    return PresencePublic(session_id=session_id, viewers=runtime.presence.viewers(session_id))


@router.post("/{session_id}/presence")
def beat_presence(
    session_id: str,
    body: PresenceBeat,
    user: CurrentUser,
    sessions: SessionsDep,
    runtime: RuntimeDep,
) -> PresencePublic:
    """A heartbeat from a viewer on SSE or polling: counts the caller as viewing for 30 s."""
    sessions.get(session_id)
    viewers = runtime.presence.heartbeat(session_id, user, body.client_id)
    return PresencePublic(session_id=session_id, viewers=viewers)


@router.delete("/{session_id}/presence/{client_id}", status_code=status.HTTP_204_NO_CONTENT)
def leave_presence(session_id: str, client_id: str, user: CurrentUser, runtime: RuntimeDep) -> None:
    """The viewer left (the page sends this when it closes)."""
    runtime.presence.leave_client(session_id, user, client_id)
