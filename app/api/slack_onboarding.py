"""Slack onboarding in one flow: the bot's link code rides GitHub sign-in, and its callback
signs the person in, links their GitHub account and binds their Slack user in one return.

The code's binding (its hash and the Slack user it was issued to) is sealed into the OAuth
state cookie with the server's keys, never read from the query. It is checked before GitHub is
asked anything, so a spent, expired or foreign code changes nothing, and spent only after
sign-in succeeded, atomically, for that Slack user alone.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi.responses import HTMLResponse

from app.api.pages import html_page
from app.errors import NotFound
from app.models import User
from app.services.github.accounts import GitHubAccounts
from app.services.slack.bot import SlackBot

STATE_KEY = "slack"


def binding(code_hash: str, slack_user_id: str) -> dict[str, str]:
    """What the sealed OAuth state carries for a link code."""
    return {"code": code_hash, "user": slack_user_id}


def _gone(message: str) -> HTMLResponse:
    return html_page("This link does not work", f"<p>{html.escape(message)}</p>", 410)


def refused(bot: SlackBot | None, bound: Any) -> HTMLResponse | None:
    """A page refusing the sealed binding when its code can no longer be used; else None."""
    if bot is None:
        return _gone("Slack is not configured on this server any more.")
    if not isinstance(bound, dict) or not bound.get("code") or not bound.get("user"):
        return _gone("this link is not valid: type `/nightshift link` in Slack for a new one")
    try:
        bot.links.bound_code(str(bound["code"]), str(bound["user"]))
    except NotFound as exc:
        return _gone(str(exc))
    return None


def finish(
    bot: SlackBot | None, accounts: GitHubAccounts | None, bound: dict[str, str], user: User
) -> HTMLResponse:
    """Bind the Slack user to the person who just signed in; their waiting requests start."""
    if bot is None:
        return _gone("Slack is not configured on this server any more.")
    try:
        link = bot.complete_bound_link(bound["code"], bound["user"], user)
    except NotFound as exc:
        return _gone(f"You are signed in, but Slack was not connected: {exc}")
    assert user.id is not None
    account = accounts.account(user.id) if accounts is not None else None
    github = f" and GitHub account <b>@{html.escape(account.login)}</b>" if account else ""
    return html_page(
        "Connected",
        f"""<p>Slack user <b>{html.escape(link.slack_name or link.slack_user_id)}</b> now acts as
<b>{html.escape(user.name or user.login)}</b> ({html.escape(user.login)}){github}. Go back to
Slack: anything you asked while unconnected starts now, and pull requests open as you.</p>
<p><a class="button" href="/">Open Nightshift</a></p>""",
    )
