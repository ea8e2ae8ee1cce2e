"""Internal routes one API process calls on another (several API processes): the writes to a
session that start away from its owner (`app/services/peers.py`), done by the owner.

Not part of the public API and left out of the OpenAPI docs. Every call needs
`X-Nightshift-Peer`, signed with the processes' shared secret (`NIGHTSHIFT_PEER_SECRET`) over
its method and path; a process that runs alone answers 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from pydantic import BaseModel, Field

from app.api.deps import HubDep, PeersDep, SessionsDep, UsersDep
from app.errors import NotFound
from app.models import User
from app.schemas import PromptPublic, SessionPublic
from app.services.peers import PEER_HEADER, PEERS_PREFIX
from workers.events import parse_event


async def require_peer(
    request: Request,
    peers: PeersDep,
    mark: Annotated[str | None, Header(alias=PEER_HEADER)] = None,
) -> None:
    if peers is None:
        raise HTTPException(404, "this API process runs alone (no NIGHTSHIFT_PEER_URL)")
    if not mark or not peers.signer.valid(mark, request.method, request.url.path):
        raise HTTPException(401, f"a valid {PEER_HEADER} header is required")


router = APIRouter(
    prefix=PEERS_PREFIX,
    tags=["internal"],
    include_in_schema=False,
    dependencies=[Depends(require_peer)],
)


class PeerEvent(BaseModel):
    event: dict[str, Any]
    source: str | None = Field(None, max_length=200)


class PeerPublished(BaseModel):
    event: dict[str, Any] | None
    """The event as stored (with its id); None when its `source` was stored before."""


class PeerPrompt(BaseModel):
    user_id: int
    text: str
    source: str = Field("api", max_length=32)


class PeerStop(BaseModel):
    user_id: int


def _user(users: UsersDep, user_id: int) -> User:
    user = users.get(user_id)
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


@router.post("/sessions/{session_id}/events")
def publish(session_id: str, body: PeerEvent, hub: HubDep, sessions: SessionsDep) -> PeerPublished:
    sessions.check(session_id)
    try:
        event = parse_event(body.event)
    except ValueError as exc:
        raise HTTPException(422, f"not an event: {exc}") from None
    stored = hub.publish(session_id, event, body.source)
    return PeerPublished(event=stored.model_dump(mode="json") if stored is not None else None)


@router.post("/sessions/{session_id}/prompts")
def add_prompt(
    session_id: str, body: PeerPrompt, sessions: SessionsDep, users: UsersDep
) -> PromptPublic:
    return sessions.add_prompt(_user(users, body.user_id), session_id, body.text, body.source)


@router.post("/sessions/{session_id}/stop")
def stop(session_id: str, body: PeerStop, sessions: SessionsDep, users: UsersDep) -> SessionPublic:
    return sessions.public(sessions.stop(_user(users, body.user_id), session_id))
