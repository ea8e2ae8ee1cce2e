"""Dependencies of the API, as `Annotated` aliases so route signatures read like sentences.

This is the one module that reads the app's state: each getter hands a route the one service
it uses (`SessionsDep`, `HubDep`, ...), so a route's signature says what it touches and no
route sees the whole runtime. Who the caller is comes from `CurrentUser` (a request),
`StreamUser` (an SSE stream, which may pass `?token=`) or `WebSocketAdmission`; all read the
credential through `app/api/credentials.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from app.api.credentials import Authenticator, BearerCredential, Credential, read_credential
from app.api.hosts import SAFE_METHODS
from app.control_jobs import ControlJobs
from app.errors import ServiceError, Unauthorized
from app.loop_lag import LoopLag
from app.models import User
from app.runtime import Runtime
from app.services.desktop import Desktops
from app.services.github.accounts import GitHubAccounts
from app.services.github.app import GitHubServices
from app.services.hub import EventHub
from app.services.ide import Ides
from app.services.images import Images
from app.services.peers import SessionPeers
from app.services.presence import Presence
from app.services.pull_requests import LocalPullRequests, PullRequests
from app.services.repos import Repos
from app.services.runners import RunnerService
from app.services.sessions import Sessions
from app.services.slack.bot import SlackBot
from app.services.stream_slots import StreamSlots
from app.services.streams import StreamConsumer
from app.services.users import Users
from app.services.websessions import WebSessions
from app.settings import Settings
from images.sandboxes.base import SandboxBackend
from images.spec import RepoSpec
from integrations.forge.base import Forge
from workers.executor import InProcessExecutor

bearer = BearerCredential(description="An API token from `nightshift tokens create`")


def _runtime(conn: HTTPConnection) -> Runtime:
    runtime: Runtime = conn.app.state.runtime
    return runtime


# ---------------------------------------------------------------- one getter per service


async def get_settings_dep(conn: HTTPConnection) -> Settings:
    return _runtime(conn).settings


async def get_engine(conn: HTTPConnection) -> Engine:
    return _runtime(conn).engine


async def get_sessions(conn: HTTPConnection) -> Sessions:
    return _runtime(conn).sessions


async def get_repos(conn: HTTPConnection) -> Repos:
    return _runtime(conn).repos


async def get_images(conn: HTTPConnection) -> Images:
    return _runtime(conn).images


async def get_hub(conn: HTTPConnection) -> EventHub:
    return _runtime(conn).hub


async def get_presence(conn: HTTPConnection) -> Presence:
    return _runtime(conn).presence


async def get_stream_slots(conn: HTTPConnection) -> StreamSlots:
    return _runtime(conn).stream_slots


async def get_runners(conn: HTTPConnection) -> RunnerService:
    return _runtime(conn).runners


async def get_control_jobs(conn: HTTPConnection) -> ControlJobs:
    return _runtime(conn).control_jobs


async def get_local_pulls(conn: HTTPConnection) -> LocalPullRequests:
    return _runtime(conn).local_pulls


async def get_pull_requests(conn: HTTPConnection) -> PullRequests:
    return _runtime(conn).pull_requests


async def get_forges(conn: HTTPConnection) -> dict[str, Forge]:
    return _runtime(conn).forges


async def get_forge_for(conn: HTTPConnection) -> Callable[[RepoSpec], Forge]:
    """The forge of a repo's spec; ForgeError when this server has no such forge."""
    return _runtime(conn).forge_for


async def get_executor(conn: HTTPConnection) -> InProcessExecutor:
    return _runtime(conn).executor


async def get_backend(conn: HTTPConnection) -> SandboxBackend:
    return _runtime(conn).backend


async def get_event_streams(conn: HTTPConnection) -> StreamConsumer | None:
    """Distributed mode's consumer of the workers' event streams; None when embedded."""
    return _runtime(conn).streams


async def get_accounts(conn: HTTPConnection) -> GitHubAccounts | None:
    """Linked GitHub accounts; None unless GitHub sign-in is configured."""
    return _runtime(conn).accounts


async def get_github(conn: HTTPConnection) -> GitHubServices | None:
    """The GitHub App's side; None unless the App is configured."""
    return _runtime(conn).github


async def get_slack_bot(conn: HTTPConnection) -> SlackBot | None:
    """The Slack bot; None unless Slack is configured."""
    return _runtime(conn).slack


async def get_users(conn: HTTPConnection) -> Users:
    return _runtime(conn).users


async def get_web_sessions(conn: HTTPConnection) -> WebSessions:
    return _runtime(conn).web_sessions


async def get_ides(conn: HTTPConnection) -> Ides:
    ides: Ides = conn.app.state.ides
    return ides


def api_ides(api: Any) -> Ides:
    """The `Ides` of the API app `api`, for the IDE origin's own app (built in the API's
    lifespan, so read when a request comes)."""
    ides: Ides = api.state.ides
    return ides


async def get_desktops(conn: HTTPConnection) -> Desktops:
    desktops: Desktops = conn.app.state.desktops
    return desktops


async def get_peers(conn: HTTPConnection) -> SessionPeers | None:
    """The other API processes (None when this one runs alone)."""
    return _runtime(conn).peers


async def get_loop_lag(conn: HTTPConnection) -> LoopLag | None:
    """The API event loop's lag meter, once the app has started."""
    loop_lag: LoopLag | None = getattr(conn.app.state, "loop_lag", None)
    return loop_lag


async def get_authenticator(conn: HTTPConnection) -> Authenticator:
    """One per app and runtime, so the local user (NIGHTSHIFT_AUTH=local) is looked up once."""
    runtime = _runtime(conn)
    auth: Authenticator | None = getattr(conn.app.state, "authenticator", None)
    if auth is None or auth.users is not runtime.users:
        auth = Authenticator(runtime.users, runtime.web_sessions, runtime.settings)
        conn.app.state.authenticator = auth
    return auth


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionsDep = Annotated[Sessions, Depends(get_sessions)]
ReposDep = Annotated[Repos, Depends(get_repos)]
ImagesDep = Annotated[Images, Depends(get_images)]
HubDep = Annotated[EventHub, Depends(get_hub)]
PresenceDep = Annotated[Presence, Depends(get_presence)]
StreamSlotsDep = Annotated[StreamSlots, Depends(get_stream_slots)]
RunnersDep = Annotated[RunnerService, Depends(get_runners)]
ControlJobsDep = Annotated[ControlJobs, Depends(get_control_jobs)]
LocalPullsDep = Annotated[LocalPullRequests, Depends(get_local_pulls)]
PullRequestsDep = Annotated[PullRequests, Depends(get_pull_requests)]
ForgesDep = Annotated[dict[str, Forge], Depends(get_forges)]
ForgeForDep = Annotated[Callable[[RepoSpec], Forge], Depends(get_forge_for)]
ExecutorDep = Annotated[InProcessExecutor, Depends(get_executor)]
BackendDep = Annotated[SandboxBackend, Depends(get_backend)]
EventStreamsDep = Annotated[StreamConsumer | None, Depends(get_event_streams)]
AccountsDep = Annotated[GitHubAccounts | None, Depends(get_accounts)]
GitHubDep = Annotated[GitHubServices | None, Depends(get_github)]
SlackBotDep = Annotated[SlackBot | None, Depends(get_slack_bot)]
UsersDep = Annotated[Users, Depends(get_users)]
PeersDep = Annotated[SessionPeers | None, Depends(get_peers)]
WebSessionsDep = Annotated[WebSessions, Depends(get_web_sessions)]
DesktopsDep = Annotated[Desktops, Depends(get_desktops)]
IdesDep = Annotated[Ides, Depends(get_ides)]
LoopLagDep = Annotated[LoopLag | None, Depends(get_loop_lag)]
AuthDep = Annotated[Authenticator, Depends(get_authenticator)]


# ---------------------------------------------------------------- who is calling


async def current_user(
    request: Request,
    auth: AuthDep,
    credential: Annotated[Credential, Security(bearer)],
) -> User:
    """The caller of a request: a bearer token, else the sign-in cookie (writes only from this
    site), else the local user when NIGHTSHIFT_AUTH=local.

    On the event loop: a caller known without I/O (a token seen valid in the last minute) is
    answered there; only a lookup goes to a thread."""
    unsafe = request.method not in SAFE_METHODS
    if credential.cookie and unsafe and not auth.same_origin(request.headers, request.url.scheme):
        raise HTTPException(
            403, "cross-site request refused: a signed-in browser may only write from this site"
        )
    if (
        not credential.token
        and not credential.cookie
        and auth.local
        and unsafe
        and request.headers.get("origin")
        and not auth.same_origin(request.headers, request.url.scheme)
    ):
        # Local mode trusts whoever reaches the port; a page on another site must not.
        raise HTTPException(403, "cross-site request refused")
    try:
        return await auth.user_async(credential)
    except Unauthorized as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


CurrentUser = Annotated[User, Depends(current_user)]


async def stream_user(conn: HTTPConnection, auth: AuthDep) -> User:
    """The caller of a server-sent event stream, which may also pass the token as `?token=`:
    browsers cannot set headers on streams. A refusal is the ServiceError's status (401)."""
    return await auth.user_async(read_credential(conn, query=True))


StreamUser = Annotated[User, Depends(stream_user)]


@dataclass(frozen=True)
class Admission:
    """The caller of a WebSocket, or why they are refused: read before the socket is accepted,
    told after it (a close code and reason the client can see, not a bare 403)."""

    user: User | None
    refusal: ServiceError | None = None

    def caller(self) -> User:
        if self.refusal is not None:
            raise self.refusal
        assert self.user is not None and self.user.id is not None
        return self.user


async def websocket_admission(conn: HTTPConnection, auth: AuthDep) -> Admission:
    try:
        return Admission(await auth.user_async(auth.websocket_credential(conn)))
    except ServiceError as exc:
        return Admission(None, exc)


WebSocketAdmission = Annotated[Admission, Depends(websocket_admission)]
