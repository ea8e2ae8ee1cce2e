"""Sign-in: GitHub OAuth for browsers (an HTTP-only session cookie), API tokens for tools."""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import secrets
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api import slack_onboarding as onboarding
from app.api.credentials import COOKIE_NAME, read_credential
from app.api.deps import (
    AccountsDep,
    AuthDep,
    CurrentUser,
    ExecutorDep,
    GitHubDep,
    PullRequestsDep,
    SettingsDep,
    SlackBotDep,
    UsersDep,
    WebSessionsDep,
)
from app.api.pages import html_page
from app.schemas import GitHubLink, Me, TokenCreate, TokenCreated, UserPublic
from app.services.github.accounts import GitHubAccounts, LinkRefused, SignInRefused
from app.settings import Settings
from integrations.github import GitHubAuthError, GitHubError, GitHubUnavailable

router = APIRouter(tags=["auth"])
log = logging.getLogger("nightshift.auth")
STATE_COOKIE = "nightshift_oauth"
STATE_TTL_S = 600


def _accounts(accounts: GitHubAccounts | None) -> GitHubAccounts:
    if accounts is None:
        raise HTTPException(
            404,
            "GitHub sign-in is not configured on this server: set GITHUB_CLIENT_ID, "
            "GITHUB_CLIENT_SECRET and NIGHTSHIFT_SECRET_KEYS (see README, GitHub)",
        )
    return accounts


def _safe_next(value: str | None) -> str:
    """A path on this site to return to; anything else (another site, `//host`) becomes `/`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def _callback_url(settings: Settings) -> str:
    return f"{settings.base_url}/auth/github/callback"


def start_sign_in(
    accounts: GitHubAccounts | None,
    settings: Settings,
    next_: str | None,
    link_to: int | None,
    slack: dict[str, str] | None = None,
) -> RedirectResponse:
    """Redirect to GitHub's authorize page; what the callback must know is sealed into a
    browser-bound cookie (`slack`: a Slack link code's binding, `app/api/slack_onboarding.py`)."""
    accounts = _accounts(accounts)
    state = secrets.token_urlsafe(24)
    sealed = accounts.cipher.seal(
        json.dumps(
            {
                "state": state,
                "next": _safe_next(next_),
                "link": link_to,
                onboarding.STATE_KEY: slack,
            }
        )
    )
    response = RedirectResponse(
        accounts.oauth.authorize_url(state, _callback_url(settings)), status_code=302
    )
    response.set_cookie(
        STATE_COOKIE,
        sealed,
        max_age=STATE_TTL_S,
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
        path="/auth/github",
    )
    return response


@router.get("/auth/github/login", response_class=RedirectResponse, status_code=302)
def github_login(
    accounts: AccountsDep,
    settings: SettingsDep,
    next_: Annotated[str | None, Query(alias="next", description="Path to return to")] = None,
) -> RedirectResponse:
    """Start GitHub sign-in: redirects to GitHub, which asks the person to authorize. Only an
    account already linked, or one the deployment allows, gets in."""
    return start_sign_in(accounts, settings, next_, None)


@router.post(
    "/auth/github/link",
    response_class=RedirectResponse,
    status_code=303,
    responses={401: {"description": "Nobody is signed in"}, 403: {"description": "Cross-site"}},
)
def github_link(
    user: CurrentUser,
    accounts: AccountsDep,
    settings: SettingsDep,
    next_: Annotated[str | None, Query(alias="next", description="Path to return to")] = None,
) -> RedirectResponse:
    """Link the caller's Nightshift account to the GitHub account they authorize next (a form
    POST from this site while signed in). A GitHub account linked to another user is refused."""
    assert user.id is not None
    response = start_sign_in(accounts, settings, next_, user.id)
    response.status_code = 303
    return response


@router.get("/auth/github/link", response_class=HTMLResponse, include_in_schema=False)
def github_link_page(
    request: Request,
    accounts: AccountsDep,
    auth: AuthDep,
    next_: Annotated[str | None, Query(alias="next")] = None,
) -> HTMLResponse:
    """Where links that ask someone to connect GitHub lead: a button that links the account
    this browser is signed in as (linking is always the signed-in person's own act)."""
    _accounts(accounts)
    back = _safe_next(next_)
    here = f"/auth/github/link?{urlencode({'next': back})}"
    user = auth.viewer(request)
    if user is None:
        return html_page(
            "Sign in first",
            "<p>Sign in to Nightshift, then come back here to connect your GitHub account.</p>"
            f'<p><a class="button" href="/signin?{urlencode({"next": here})}">Sign in</a></p>',
            401,
        )
    assert user.id is not None
    account = accounts.account(user.id) if accounts is not None else None
    linked = (
        f"<p>It is linked to GitHub account <b>@{html.escape(account.login)}</b> now; "
        "authorize that account again to renew the link.</p>"
        if account is not None
        else ""
    )
    return html_page(
        "Connect your GitHub account",
        f"""<p>You are signed in as <b>{html.escape(user.name)}</b> ({html.escape(user.login)}).
GitHub will ask which account to authorize; pull requests you start are then opened as that
account.</p>{linked}<form method="post" action="{html.escape(here)}">
<button type="submit">Connect GitHub</button></form>
<p class="muted">Not you? Close this page.</p>""",
    )


def _refused(title: str, message: str, status: int) -> HTMLResponse:
    return html_page(
        title,
        f'<p>{html.escape(message)}</p><p><a class="button" href="/">Back to Nightshift</a></p>',
        status,
    )


@router.get("/auth/github/callback", response_class=RedirectResponse, status_code=303)
def github_callback(
    request: Request,
    accounts_: AccountsDep,
    settings: SettingsDep,
    auth: AuthDep,
    web_sessions: WebSessionsDep,
    bot: SlackBotDep,
    github: GitHubDep,
    pull_requests: PullRequestsDep,
    executor: ExecutorDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    """GitHub sends the browser back here; checks `state`, links the person, sets the cookie.
    A person this server does not let in gets a page saying so (403), and nothing changes."""
    accounts = _accounts(accounts_)
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
    link_to = expected.get("link")
    viewer = auth.viewer(request) if link_to is not None else None
    if link_to is not None and (viewer.id if viewer is not None else None) != link_to:
        # The browser that asked to link must still be signed in as the same user.
        return _refused(
            "GitHub was not linked",
            "You are no longer signed in as the account that asked to link GitHub. Sign in "
            "again and start the link from there.",
            403,
        )
    slack = expected.get(onboarding.STATE_KEY)
    if slack is not None and (gone := onboarding.refused(bot, slack)) is not None:
        # A spent or expired Slack link: refused before GitHub is asked anything.
        gone.delete_cookie(STATE_COOKIE, path="/auth/github")
        return gone
    try:
        user = accounts.sign_in(code, _callback_url(settings), link_to=link_to)
    except SignInRefused as exc:
        log.warning("GitHub sign-in refused: %s", exc)
        response: Response = _refused("You cannot sign in here", str(exc), 403)
        response.delete_cookie(STATE_COOKIE, path="/auth/github")
        return response
    except LinkRefused as exc:
        response = _refused("GitHub was not linked", str(exc), 409)
        response.delete_cookie(STATE_COOKIE, path="/auth/github")
        return response
    except GitHubUnavailable as exc:
        raise HTTPException(502, str(exc)) from exc
    except GitHubAuthError as exc:
        raise HTTPException(400, str(exc)) from exc
    except GitHubError as exc:
        raise HTTPException(502, str(exc)) from exc
    response = (
        onboarding.finish(bot, accounts, slack, user)
        if slack is not None
        else RedirectResponse(_safe_next(expected.get("next")), status_code=303)
    )
    response.set_cookie(
        COOKIE_NAME,
        web_sessions.create(user),
        max_age=int(web_sessions.ttl_s),
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
        path="/",
    )
    response.delete_cookie(STATE_COOKIE, path="/auth/github")
    log.info("%s %s with GitHub", user.login, "linked" if link_to else "signed in")
    if github is not None:
        # Pull requests that waited for this person to sign in open now, in the background.
        executor.submit(lambda: asyncio.to_thread(github.opener.open_pending, pull_requests, user))
        # So do the GitHub mentions that waited for them to link.
        executor.submit(lambda: asyncio.to_thread(github.triggers.start_pending, user))
    return response


@router.post("/auth/logout", response_class=RedirectResponse, status_code=303)
def logout(request: Request, auth: AuthDep, web_sessions: WebSessionsDep) -> RedirectResponse:
    """End the browser's sign-in (the session is revoked server-side) and go home."""
    cookie = read_credential(request, tokens=False).cookie
    if cookie and not auth.same_origin(request.headers, request.url.scheme):
        raise HTTPException(403, "cross-site request refused")
    if cookie:
        web_sessions.revoke(cookie)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


@router.get("/api/me")
def me(user: CurrentUser, accounts: AccountsDep, settings: SettingsDep) -> Me:
    """The caller, whether their GitHub account is linked, and where to link it."""
    assert user.id is not None
    account = accounts.account(user.id) if accounts is not None else None
    return Me(
        user=UserPublic.model_validate(user),
        github=GitHubLink(login=account.login, linked_at=account.linked_at) if account else None,
        # The page that links GitHub to this account (a plain GitHub sign-in never does).
        github_login_url=f"{settings.base_url}/auth/github/link" if accounts else None,
        desktop=settings.desktop,
        ide=settings.ide,
    )


@router.post("/api/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, user: CurrentUser, users: UsersDep) -> TokenCreated:
    """A new API token for the caller (for the CLI or a script); shown once."""
    token = users.create_token(user, body.label)
    return TokenCreated(token=token, label=body.label, user=UserPublic.model_validate(user))
