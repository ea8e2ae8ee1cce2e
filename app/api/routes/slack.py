"""Slack: the one endpoint Slack calls (events, `/nightshift`, interactivity), and linking a
Slack user to a Nightshift user through the one-time link the bot sends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from app.api import slack_onboarding as onboarding
from app.api.credentials import COOKIE_NAME
from app.api.deps import AccountsDep, AuthDep, CurrentUser, SettingsDep, SlackBotDep, UsersDep
from app.api.pages import html_page as _page
from app.api.routes.auth import start_sign_in
from app.errors import NotFound, Unauthorized
from app.models import User
from app.schemas import SlackLinkCreate, SlackLinkPublic, UserPublic
from app.services.slack.bot import SlackBot
from app.settings import reveal
from app.slack_tables import SlackLinkCode, SlackUserLink

router = APIRouter(tags=["slack"])
NOT_CONFIGURED = (
    "Slack is not configured on this server: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET "
    "(see README, Slack)"
)
SOCKET_MODE_ONLY = (
    "this server receives Slack over Socket Mode (SLACK_APP_TOKEN); set SLACK_SIGNING_SECRET "
    "to accept HTTP requests at /slack/events too"
)


def get_bot(bot: SlackBotDep) -> SlackBot:
    if bot is None:
        raise HTTPException(503, NOT_CONFIGURED)
    return bot


SlackDep = Annotated[SlackBot, Depends(get_bot)]


@router.post(
    "/slack/events",
    summary="Slack's request URL: events, the /nightshift command and interactivity",
    response_class=Response,
    responses={401: {"description": "missing, wrong or stale Slack signature"}},
)
async def slack_events(request: Request, bot: SlackDep) -> Response:
    """Point the Slack app's Event Subscriptions, Slash Commands and Interactivity request
    URLs here. Every request must carry Slack's `X-Slack-Signature` over a timestamp less than
    five minutes old; it is answered at once and the work runs in the background."""
    if bot.handler is None:
        raise HTTPException(404, SOCKET_MODE_ONLY)
    return await bot.handler.handle(request)


# ---------------------------------------------------------------- linking identities


def _public(link: SlackUserLink, user: User) -> SlackLinkPublic:
    return SlackLinkPublic(
        slack_user_id=link.slack_user_id,
        slack_name=link.slack_name,
        user=UserPublic.model_validate(user),
        linked_at=link.linked_at,
    )


@router.post("/api/slack/link")
def link_slack_user(body: SlackLinkCreate, user: CurrentUser, bot: SlackDep) -> SlackLinkPublic:
    """Bind the Slack user behind a one-time code (from the bot's link) to the caller."""
    return _public(bot.complete_link(body.code, user), user)


def _csrf(bot: SlackBot, code: str, user: User) -> str:
    secret = (reveal(bot.settings.slack_signing_secret) or "").encode()
    key = hashlib.sha256(b"nightshift-slack-link\0" + secret).digest()
    return hmac.new(key, f"{code}:{user.id}".encode(), hashlib.sha256).hexdigest()


def _who(info: SlackLinkCode) -> str:
    name = f"{info.slack_name} ({info.slack_user_id})" if info.slack_name else info.slack_user_id
    return html.escape(name)


@router.get("/slack/link/{code}", response_class=HTMLResponse, include_in_schema=False)
def link_page(
    code: str, request: Request, bot: SlackBotDep, auth: AuthDep, accounts: AccountsDep
) -> HTMLResponse:
    if bot is None:
        return _page("Slack is not set up", f"<p>{html.escape(NOT_CONFIGURED)}</p>", 503)
    try:
        info = bot.links.code(code)
    except NotFound as exc:
        return _page("This link does not work", f"<p>{html.escape(str(exc))}</p>", 410)
    user = auth.viewer(request)
    action = html.escape(f"/slack/link/{code}")
    if accounts is not None and (user is None or accounts.account(user.id or 0) is None):
        return _github_page(info, code, user)
    if user is not None:
        return _page(
            "Connect your Slack account",
            f"""<p>Slack user <b>{_who(info)}</b> will act as your Nightshift account
<b>{html.escape(user.name)}</b> ({html.escape(user.login)}, {html.escape(user.email)}): sessions,
commits and pull requests it starts from Slack are made in this name.</p>
<form method="post" action="{action}"><input type="hidden" name="csrf" value="{_csrf(bot, code, user)}">
<button type="submit">Connect</button></form>
<p class="muted">Not you? Close this page; the link expires on its own.</p>""",
        )
    return _page(
        "Connect your Slack account",
        f"""<p>Slack user <b>{_who(info)}</b> wants to start Nightshift sessions. Sign in to say
which Nightshift account that is.</p>
<form method="post" action="{action}"><label>Your Nightshift API token
(from <code>nightshift tokens create</code>)<input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Connect</button></form>""",
    )


def _github_page(info: SlackLinkCode, code: str, user: User | None) -> HTMLResponse:
    """One flow: GitHub's consent signs the person in and links GitHub and Slack together."""
    action = html.escape(f"/slack/link/{code}")
    whom = (
        f"your Nightshift account <b>{html.escape(user.name or user.login)}</b> "
        f"({html.escape(user.login)}), linked to the GitHub account you authorize next"
        if user is not None
        else "the Nightshift account of the GitHub account you authorize next"
    )
    return _page(
        "Connect Slack and GitHub",
        f"""<p>Slack user <b>{_who(info)}</b> will act as {whom}: sessions, commits and pull
requests it starts from Slack are made in that name.</p>
<form method="post" action="{action}/github"><button type="submit">Continue with GitHub</button></form>
<p class="muted">Not you? Close this page; the link expires on its own.</p>
<details><summary class="muted">No GitHub account? Use a Nightshift API token</summary>
<form method="post" action="{action}"><label>Your Nightshift API token
(from <code>nightshift tokens create</code>)<input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Connect</button></form></details>""",
    )


@router.post("/slack/link/{code}/github", include_in_schema=False, response_model=None)
def link_with_github(
    code: str,
    request: Request,
    bot: SlackBotDep,
    accounts: AccountsDep,
    auth: AuthDep,
    settings: SettingsDep,
) -> Response:
    """Start GitHub sign-in carrying the code's binding; the callback finishes the link. Only
    from this site's own page: another site must not start it in a visitor's browser (GitHub
    skips its consent for an app it already authorized)."""
    if bot is None or accounts is None:
        return _page("Slack is not set up", f"<p>{html.escape(NOT_CONFIGURED)}</p>", 503)
    if not auth.same_origin(request.headers, request.url.scheme):
        return _page(
            "That did not work",
            "<p>The form was sent from another site. Open the link from Slack again.</p>",
            403,
        )
    try:
        info = bot.links.code(code)
    except NotFound as exc:
        return _page("This link does not work", f"<p>{html.escape(str(exc))}</p>", 410)
    viewer = auth.viewer(request)
    response = start_sign_in(
        accounts,
        settings,
        "/",
        viewer.id if viewer is not None else None,
        slack=onboarding.binding(info.code_hash, info.slack_user_id),
    )
    response.status_code = 303
    return response


@router.post("/slack/link/{code}", response_class=HTMLResponse, include_in_schema=False)
async def link_submit(
    code: str, request: Request, bot: SlackBotDep, auth: AuthDep, users: UsersDep
) -> HTMLResponse:
    if bot is None:
        return _page("Slack is not set up", f"<p>{html.escape(NOT_CONFIGURED)}</p>", 503)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    if token:
        try:
            user = await asyncio.to_thread(users.authenticate, token)
        except Unauthorized as exc:
            return _page("That did not work", f"<p>{html.escape(str(exc))}.</p>", 401)
    else:
        if not auth.same_origin(request.headers, request.url.scheme) and (
            COOKIE_NAME in request.cookies or request.headers.get("origin")
        ):
            return _page(
                "That did not work",
                "<p>The form was sent from another site. Open the link from Slack again.</p>",
                403,
            )
        viewer = await asyncio.to_thread(auth.viewer, request)
        if viewer is None:
            return _page("Sign in first", "<p>Open the link again and sign in.</p>", 401)
        sent = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(sent, _csrf(bot, code, viewer)):
            return _page(
                "That did not work",
                "<p>The form was not sent from this page. Open the link from Slack again.</p>",
                403,
            )
        user = viewer
    try:
        link = await asyncio.to_thread(bot.complete_link, code, user)
    except NotFound as exc:
        return _page("This link does not work", f"<p>{html.escape(str(exc))}</p>", 410)
    name = html.escape(link.slack_name or link.slack_user_id)
    return _page(
        "Connected",
        f"""<p>Slack user <b>{name}</b> now acts as <b>{html.escape(user.name)}</b>
({html.escape(user.login)}). Go back to Slack: anything you asked while unconnected starts now.</p>""",
    )
