"""Browser sign-in with an API token, and whether (and how) a browser is signed in.

The cookie is the one GitHub sign-in sets (`app/api/routes/auth.py`): an HTTP-only,
`SameSite=Lax` browser session (`app/services/websessions.py`), never the token itself. Signing
out is `POST /auth/logout`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from app.api.credentials import COOKIE_NAME, read_credential
from app.api.deps import AccountsDep, AuthDep, SettingsDep, UsersDep, WebSessionsDep
from app.errors import Unauthorized
from app.schemas import SignInState, TokenSignIn, UserPublic
from app.settings import Settings

router = APIRouter(prefix="/api/auth", tags=["auth"])
GITHUB_LOGIN_PATH = "/auth/github/login"


def _secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


@router.get("/state")
async def sign_in_state(
    request: Request,
    response: Response,
    auth: AuthDep,
    settings: SettingsDep,
    accounts: AccountsDep,
) -> SignInState:
    """Who this browser (or token) is; `user` is null when nobody is signed in (not a 401, so
    a page can offer sign-in without an error), and how one can sign in here."""
    credential = read_credential(request, query=True)
    user: UserPublic | None = None
    try:
        user = UserPublic.model_validate(await asyncio.to_thread(auth.user, credential))
    except Unauthorized:
        if read_credential(request, tokens=False).cookie and not credential.from_header:
            # Expired or revoked: forget it so the browser stops sending it.
            response.delete_cookie(COOKIE_NAME, path="/")
    return SignInState(
        user=user,
        auth=settings.auth,
        github_login=GITHUB_LOGIN_PATH if accounts is not None else None,
    )


@router.post(
    "/token",
    responses={
        401: {"description": "The token is not valid"},
        403: {"description": "Sent from another site"},
    },
)
async def sign_in_with_token(
    body: TokenSignIn,
    request: Request,
    auth: AuthDep,
    users: UsersDep,
    web_sessions: WebSessionsDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Sign this browser in as the owner of an API token (for servers without GitHub, or
    people without an account there). The browser gets a session cookie, not the token."""
    if not auth.same_origin(request.headers, request.url.scheme):
        # Another site must not sign a visitor's browser in as someone else.
        raise HTTPException(403, "cross-site sign-in refused")
    try:
        user = await asyncio.to_thread(users.authenticate, body.token.strip())
    except Unauthorized as exc:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_401_UNAUTHORIZED)
    response = JSONResponse(UserPublic.model_validate(user).model_dump(mode="json"))
    response.set_cookie(
        COOKIE_NAME,
        await asyncio.to_thread(web_sessions.create, user),
        max_age=int(web_sessions.ttl_s),
        httponly=True,
        samesite="lax",  # sent when a teammate follows a shared link; not on cross-site POSTs
        secure=_secure(settings),
        path="/",
    )
    return response
