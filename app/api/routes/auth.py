"""Sign-in: GitHub OAuth for browsers (an HTTP-only session cookie), API tokens for tools."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import RedirectResponse

from app.api.deps import COOKIE_NAME, CurrentUser, RuntimeDep, same_origin
from app.runtime import Runtime
from app.schemas import GitHubLink, Me, TokenCreate, TokenCreated, UserPublic
from app.services.github_accounts import GitHubAccounts
from integrations.github import GitHubAuthError, GitHubError, GitHubUnavailable

router = APIRouter(tags=["auth"])
log = logging.getLogger("nightshift.auth")
STATE_COOKIE = "nightshift_oauth"
STATE_TTL_S = 600


def _accounts(runtime: Runtime) -> GitHubAccounts:
    if runtime.accounts is None:
        raise HTTPException(
            404,
            "GitHub sign-in is not configured on this server: set GITHUB_CLIENT_ID, "
            "GITHUB_CLIENT_SECRET and NIGHTSHIFT_SECRET_KEYS (see README, GitHub)",
        )
    return runtime.accounts


def _safe_next(value: str | None) -> str:
    """A path on this site to return to; anything else (another site, `//host`) becomes `/`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _secure(runtime: Runtime) -> bool:
    return runtime.settings.base_url.startswith("https://")


def _callback_url(runtime: Runtime) -> str:
    return f"{runtime.settings.base_url}/auth/github/callback"


@router.get("/auth/github/login", response_class=RedirectResponse, status_code=302)
def github_login(
    runtime: RuntimeDep,
    next_: Annotated[str | None, Query(alias="next", description="Path to return to")] = None,
) -> RedirectResponse:
    """Start GitHub sign-in: redirects to GitHub, which asks the person to authorize."""
    accounts = _accounts(runtime)
    state = secrets.token_urlsafe(24)
    sealed = accounts.cipher.seal(json.dumps({"state": state, "next": _safe_next(next_)}))
    response = RedirectResponse(
        accounts.oauth.authorize_url(state, _callback_url(runtime)), status_code=302
    )
    response.set_cookie(
        STATE_COOKIE,
        sealed,
        max_age=STATE_TTL_S,
        httponly=True,
        samesite="lax",
        secure=_secure(runtime),
        path="/auth/github",
    )
    return response


@router.get("/auth/github/callback", response_class=RedirectResponse, status_code=303)
def github_callback(
    request: Request,
    runtime: RuntimeDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> RedirectResponse:
    """GitHub sends the browser back here; checks `state`, links the person, sets the cookie."""
    accounts = _accounts(runtime)
    if error:
        raise HTTPException(400, f"GitHub sign-in did not complete: {error_description or error}")
    sealed = request.cookies.get(STATE_COOKIE)
    opened = accounts.cipher.unseal(sealed, STATE_TTL_S) if sealed else None
    if not code or not state or opened is None:
        raise HTTPException(
            400, "sign-in state is missing or expired; start again at /auth/github/login"
        )
    expected = json.loads(opened)
    if not hmac.compare_digest(str(expected["state"]), state):
        raise HTTPException(400, "sign-in state does not match; start again at /auth/github/login")
    try:
        user = accounts.sign_in(code, _callback_url(runtime))
    except GitHubUnavailable as exc:
        raise HTTPException(502, str(exc)) from exc
    except GitHubAuthError as exc:
        raise HTTPException(400, str(exc)) from exc
    except GitHubError as exc:
        raise HTTPException(502, str(exc)) from exc
    response = RedirectResponse(_safe_next(expected.get("next")), status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        runtime.web_sessions.create(user),
        max_age=int(runtime.web_sessions.ttl_s),
        httponly=True,
        samesite="lax",
        secure=_secure(runtime),
        path="/",
    )
    response.delete_cookie(STATE_COOKIE, path="/auth/github")
    log.info("%s signed in with GitHub", user.login)
    github = runtime.github
    if github is not None:
        # Pull requests that waited for this person to sign in open now, in the background.
        runtime.executor.submit(
            lambda: asyncio.to_thread(github.opener.open_pending, runtime.pull_requests, user)
        )
    return response


@router.post("/auth/logout", response_class=RedirectResponse, status_code=303)
def logout(request: Request, runtime: RuntimeDep) -> RedirectResponse:
    """End the browser's sign-in (the session is revoked server-side) and go home."""
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie and not same_origin(runtime, request.headers, request.url.scheme):
        raise HTTPException(403, "cross-site request refused")
    if cookie:
        runtime.web_sessions.revoke(cookie)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


@router.get("/api/me")
def me(user: CurrentUser, runtime: RuntimeDep) -> Me:
    """The caller, whether their GitHub account is linked, and where to link it."""
    assert user.id is not None
    account = runtime.accounts.account(user.id) if runtime.accounts is not None else None
    return Me(
        user=UserPublic.model_validate(user),
        github=GitHubLink(login=account.login, linked_at=account.linked_at) if account else None,
        github_login_url=(
            f"{runtime.settings.base_url}/auth/github/login" if runtime.accounts else None
        ),
    )


@router.post("/api/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, user: CurrentUser, runtime: RuntimeDep) -> TokenCreated:
    """A new API token for the caller (for the CLI or a script); shown once."""
    token = runtime.users.create_token(user, body.label)
    return TokenCreated(token=token, label=body.label, user=UserPublic.model_validate(user))
