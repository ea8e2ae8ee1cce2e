"""Dependencies of the API, as `Annotated` aliases so route signatures read like sentences."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized
from app.models import User
from app.runtime import Runtime
from app.services.images import Images
from app.services.repos import Repos
from app.services.sessions import Sessions
from app.settings import Settings

COOKIE_NAME = "nightshift_session"
bearer = HTTPBearer(auto_error=False, description="An API token from `nightshift tokens create`")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings_dep(runtime: RuntimeDep) -> Settings:
    return runtime.settings


def get_sessions(runtime: RuntimeDep) -> Sessions:
    return runtime.sessions


def get_repos(runtime: RuntimeDep) -> Repos:
    return runtime.repos


def get_images(runtime: RuntimeDep) -> Images:
    return runtime.image_service


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ImagesDep = Annotated[Images, Depends(get_images)]
SessionsDep = Annotated[Sessions, Depends(get_sessions)]
ReposDep = Annotated[Repos, Depends(get_repos)]


def resolve_user(runtime: Runtime, token: str | None) -> User:
    """The caller: a valid API token's user, else the local user when NIGHTSHIFT_AUTH=local."""
    if token:
        return runtime.users.authenticate(token)
    if runtime.settings.auth == "local":
        user: User | None = getattr(runtime, "local_user", None)
        if user is None:
            user = runtime.users.local_user()
            runtime.local_user = user  # type: ignore[attr-defined]
        return user
    raise Unauthorized("authentication required: send `Authorization: Bearer <token>`")


def current_user(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    token = credentials.credentials if credentials else request.cookies.get(COOKIE_NAME)
    try:
        return resolve_user(runtime, token)
    except Unauthorized as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


CurrentUser = Annotated[User, Depends(current_user)]


def stream_user(request: Request, runtime: Runtime) -> User:
    """Streams (WebSocket, SSE) may also pass the token as `?token=`: browsers cannot set
    headers on them."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    token = token or request.cookies.get(COOKIE_NAME) or request.query_params.get("token")
    return resolve_user(runtime, token)


def websocket_user(websocket: WebSocket, runtime: Runtime) -> User:
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    token = token or websocket.cookies.get(COOKIE_NAME) or websocket.query_params.get("token")
    return resolve_user(runtime, token)
