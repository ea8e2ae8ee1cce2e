"""Browser sign-in with an API token, and who the browser is signed in as.

All of the web viewer's cookie handling is here. The cookie `nightshift_session` is HTTP-only
(page scripts never see it) and holds what `app/api/deps.py` accepts from it: a browser
sign-in session from `runtime.web_sessions` where the server keeps them, else the API token
itself. GitHub sign-in, when configured, starts at `/auth/github/login` and sets the same
cookie.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from app.api.deps import COOKIE_NAME, RuntimeDep, stream_user
from app.errors import Unauthorized
from app.models import SignInState, TokenSignIn, User, UserPublic
from app.runtime import Runtime
from app.settings import Settings

router = APIRouter(prefix="/api", tags=["auth"])
COOKIE_MAX_AGE_S = 30 * 86400
GITHUB_LOGIN_PATH = "/auth/github/login"


def _web_sessions(runtime: Runtime) -> Any:
    """Server-side browser sessions, when this server keeps them (GitHub sign-in adds them)."""
    return getattr(runtime, "web_sessions", None)


def cookie_value(runtime: Runtime, user: User, token: str) -> str:
    """What goes into the cookie for `user`, who proved themselves with `token`."""
    sessions = _web_sessions(runtime)
    return str(sessions.create(user)) if sessions is not None else token


def set_session_cookie(response: Response, value: str, settings: Settings) -> None:
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="lax",  # sent when a teammate follows a shared link; not on cross-site POSTs
        secure=settings.base_url.startswith("https://"),
        path="/",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        COOKIE_NAME,
        httponly=True,
        samesite="lax",
        secure=settings.base_url.startswith("https://"),
        path="/",
    )


def _github_login(request: Request, runtime: Runtime) -> str | None:
    """Where GitHub sign-in starts, if this server has the route and GitHub is configured."""
    paths = {getattr(route, "path", None) for route in request.app.routes}
    if GITHUB_LOGIN_PATH not in paths:
        return None
    configured = getattr(runtime, "accounts", True)  # the GitHub accounts service, or None
    return GITHUB_LOGIN_PATH if configured is not None else None


@router.get("/auth/state")
async def sign_in_state(request: Request, response: Response, runtime: RuntimeDep) -> SignInState:
    """Who this browser (or token) is; `user` is null when nobody is signed in (not a 401, so
    a page can offer sign-in without an error), and how one can sign in here."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    cookie = request.cookies.get(COOKIE_NAME)
    user: UserPublic | None = None
    try:
        found = await asyncio.to_thread(stream_user, request, runtime)
        user = UserPublic.model_validate(found)
    except Unauthorized:
        if cookie and not token:  # revoked or stale: forget it so the browser stops sending it
            clear_session_cookie(response, runtime.settings)
    return SignInState(
        user=user, auth=runtime.settings.auth, github_login=_github_login(request, runtime)
    )


@router.post("/auth/token", responses={401: {"description": "The token is not valid"}})
async def sign_in_with_token(body: TokenSignIn, runtime: RuntimeDep) -> JSONResponse:
    """Check an API token and keep it in an HTTP-only cookie for this browser."""
    token = body.token.strip()
    try:
        user = await asyncio.to_thread(runtime.users.authenticate, token)
    except Unauthorized as exc:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_401_UNAUTHORIZED)
    response = JSONResponse(UserPublic.model_validate(user).model_dump(mode="json"))
    value = await asyncio.to_thread(cookie_value, runtime, user, token)
    set_session_cookie(response, value, runtime.settings)
    return response


@router.post("/auth/signout", status_code=status.HTTP_204_NO_CONTENT)
def sign_out(request: Request, runtime: RuntimeDep) -> Response:
    """End this browser's sign-in (an API token it was made with stays valid)."""
    cookie = request.cookies.get(COOKIE_NAME)
    sessions = _web_sessions(runtime)
    if cookie and sessions is not None:
        sessions.revoke(cookie)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookie(response, runtime.settings)
    return response
