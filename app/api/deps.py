"""Dependencies of the API, as `Annotated` aliases so route signatures read like sentences."""

from __future__ import annotations

from typing import Annotated, Any

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
"""The browser sign-in cookie: a web session id (see `app/services/websessions.py`)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
    return runtime.images


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ImagesDep = Annotated[Images, Depends(get_images)]
SessionsDep = Annotated[Sessions, Depends(get_sessions)]
ReposDep = Annotated[Repos, Depends(get_repos)]


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


def same_origin(runtime: Runtime, headers: Any, url_scheme: str) -> bool:
    """Whether a browser request comes from one of our own pages: its `Origin` (or `Referer`)
    is our public URL or the host it was sent to. Browsers send `Origin` on every cross-site
    POST and WebSocket, so a forged request from another site fails this check."""
    own = {_origin(runtime.settings.base_url)}
    host = headers.get("host")
    if host:
        own.add(_origin(f"{url_scheme}://{host}"))
    origin = headers.get("origin")
    if origin:
        return origin != "null" and _origin(origin) in own
    referer = headers.get("referer")
    if referer:
        return _origin(referer) in own
    return headers.get("sec-fetch-site") in ("same-origin", "none")


def resolve_user(runtime: Runtime, token: str | None, cookie: str | None = None) -> User:
    """The caller: a valid API token's user, else the signed-in browser's user, else the local
    user when NIGHTSHIFT_AUTH=local."""
    if token:
        return runtime.users.authenticate(token)
    if cookie:
        try:
            return runtime.web_sessions.authenticate(cookie)
        except Unauthorized:
            if runtime.settings.auth != "local":
                raise
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
    token = credentials.credentials if credentials else None
    cookie = None if token else request.cookies.get(COOKIE_NAME)
    if (
        cookie
        and request.method not in SAFE_METHODS
        and not same_origin(runtime, request.headers, request.url.scheme)
    ):
        raise HTTPException(
            403, "cross-site request refused: a signed-in browser may only write from this site"
        )
    if (
        not token
        and not cookie
        and runtime.settings.auth == "local"
        and request.method not in SAFE_METHODS
        and request.headers.get("origin")
        and not same_origin(runtime, request.headers, request.url.scheme)
    ):
        # Local mode trusts whoever reaches the port; a page on another site must not.
        raise HTTPException(403, "cross-site request refused")
    try:
        return resolve_user(runtime, token, cookie)
    except Unauthorized as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


CurrentUser = Annotated[User, Depends(current_user)]


def stream_user(request: Request, runtime: Runtime) -> User:
    """Streams (WebSocket, SSE) may also pass the token as `?token=`: browsers cannot set
    headers on them."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    token = token or request.query_params.get("token")
    return resolve_user(runtime, token, None if token else request.cookies.get(COOKIE_NAME))


def websocket_user(websocket: WebSocket, runtime: Runtime) -> User:
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    token = token or websocket.query_params.get("token")
    cookie = None if token else websocket.cookies.get(COOKIE_NAME)
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    if cookie and not same_origin(runtime, websocket.headers, scheme):
        # Cross-site WebSocket hijacking: a foreign page must not ride the cookie.
        raise Unauthorized("cross-site WebSocket refused: connect from this site")
    return resolve_user(runtime, token, cookie)
