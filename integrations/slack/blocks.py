"""Block Kit for the bot's messages: the session status message, the repo picker, the link
invitation and the new-session modal. Plain dicts, as the Web API takes them.

Links are mrkdwn links rather than URL buttons: a URL button still sends an interaction
payload that would need acknowledging, and a link does the same job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from integrations.slack.text import escape, quote

PICK_ACTION = "nightshift_pick_repo"
PICK_BLOCK_PREFIX = "nightshift_pick:"
MODAL_CALLBACK = "nightshift_new_session"
MAX_OPTIONS = 100  # Slack's limit for a static_select

Block = dict[str, Any]

_STATUS = {
    "queued": (":hourglass_flowing_sand:", "Queued"),
    "starting": (":rocket:", "Starting a sandbox"),
    "running": (":gear:", "Working"),
    "idle": (":zzz:", "Waiting for a follow-up"),
    "finished": (":white_check_mark:", "Done"),
    "failed": (":x:", "Failed"),
    "stopped": (":octagonal_sign:", "Stopped"),
}
TERMINAL = frozenset({"finished", "failed", "stopped"})


def _plain(text: str, limit: int) -> dict[str, Any]:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text or " ", "emoji": True}


def _mrkdwn(text: str, limit: int = 3000) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text if len(text) <= limit else text[: limit - 1] + "…"}


def section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(text, 2000)]}


@dataclass(frozen=True)
class StatusView:
    """What the status message of one session shows."""

    session_id: str
    url: str
    repo: str
    status: str
    title: str
    picked: str = ""
    """How the repository was chosen, as mrkdwn (`this channel's default`, `picked by <@U1>`)."""
    activity: str | None = None
    queued: int = 0
    pr_url: str | None = None
    pr_number: int | None = None
    pr_state: str | None = None
    branch: str | None = None
    summary: str | None = None
    failure: str | None = None
    notice: str | None = None
    """Something a person must do (sign in with GitHub so the PR opens in their name)."""
    notice_link: str | None = None
    origin: str | None = None
    """Where the prompt being worked on came from (a GitHub comment, review or check)."""
    origin_link: str | None = None
    participants: tuple[str, ...] = field(default_factory=tuple)


def status_message(view: StatusView) -> tuple[str, list[Block]]:
    """The fallback text (notifications) and the blocks of a session's status message."""
    emoji, label = _STATUS.get(view.status, (":grey_question:", view.status))
    how = f" ({view.picked})" if view.picked else ""
    blocks: list[Block] = [
        section(f"{emoji} *{label}* on `{escape(view.repo)}`{how}\n*{escape(view.title)}*")
    ]
    fallback = f"{label}: {view.title} on {view.repo}"
    if view.status == "finished":
        if view.pr_url:
            state = f" ({view.pr_state})" if view.pr_state and view.pr_state != "open" else ""
            number = f"#{view.pr_number}" if view.pr_number else ""
            blocks.append(section(f":link: <{view.pr_url}|Pull request {number}>{state}"))
            fallback += f" — pull request {view.pr_url}"
        elif view.branch:
            blocks.append(section(f"Pushed branch `{escape(view.branch)}`."))
        else:
            blocks.append(section("The agent changed nothing, so there is no pull request."))
        if view.summary:
            blocks.append(section(quote(view.summary, 1500)))
    elif view.status == "failed":
        reason = view.failure or "the session failed"
        blocks.append(section(f"*Why:* {escape(reason)}"))
        fallback += f" — {reason}"
    elif view.status == "stopped":
        if view.failure:
            blocks.append(section(escape(view.failure)))
    elif view.activity:
        blocks.append(context(f"`{escape(view.activity[:200])}`"))
    if view.notice and not view.pr_url:
        link = f" <{view.notice_link}|Open>" if view.notice_link else ""
        blocks.append(section(f":warning: {escape(view.notice)}{link}"))
        fallback += f" — {view.notice}"
    if view.origin:
        link = view.origin_link or ""
        safe = link.startswith(("https://", "http://")) and not set(link) & set("<>| \n")
        blocks.append(
            context(
                f":speech_balloon: {escape(view.origin[:300])}{f' <{link}|Open>' if safe else ''}"
            )
        )
    if view.queued and view.status not in TERMINAL:
        s = "" if view.queued == 1 else "s"
        blocks.append(context(f":inbox_tray: {view.queued} follow-up{s} queued"))
    hint = (
        "mention me in this thread to follow up"
        if view.status in TERMINAL
        else "reply `stop` or react :octagonal_sign: to stop"
    )
    people = " ".join(f"<@{p}>" for p in view.participants[:10])
    blocks.append(
        context(
            f"<{view.url}|Open in Nightshift> · session `{view.session_id}` · {hint}"
            + (f" · {people}" if people else "")
        )
    )
    return fallback, blocks


def repo_picker(
    request_id: int, requester: str, prompt: str, options: list[tuple[str, str]], why: str
) -> tuple[str, list[Block]]:
    """Ask which repository a request is about; `options` are (name, description) pairs."""
    choices = [
        {
            "text": _plain(name, 75),
            "value": name[:150],
            **({"description": _plain(desc, 75)} if desc else {}),
        }
        for name, desc in options[:MAX_OPTIONS]
    ]
    text = f"<@{requester}> which repository should I work on?"
    blocks: list[Block] = [
        section(f"{text} {escape(why)}".strip()),
        section(quote(prompt)),
        {
            "type": "actions",
            "block_id": f"{PICK_BLOCK_PREFIX}{request_id}",
            "elements": [
                {
                    "type": "static_select",
                    "action_id": PICK_ACTION,
                    "placeholder": _plain("Pick a repository", 150),
                    "options": choices,
                }
            ],
        },
        context(
            "Next time, name it with `repo:owner/name`, or give this channel a default with "
            "`/nightshift default REPO`."
        ),
    ]
    return text, blocks


def link_invitation(url: str, minutes: int) -> tuple[str, list[Block]]:
    """The direct message that asks a Slack user to connect their Nightshift identity."""
    text = "Connect your Slack account to Nightshift to start sessions from Slack."
    blocks = [
        section(
            f"{text} Sessions, commits and pull requests are made in your name, so I need to "
            "know who you are on Nightshift first."
        ),
        section(
            f":key: <{url}|Connect your Slack account> (open it while signed in to Nightshift)"
        ),
        context(
            f"The link works once and expires in {minutes} minutes. `/nightshift link` makes a new one."
        ),
    ]
    return text, blocks


def new_session_modal(
    channel_id: str, repos: list[tuple[str, str]], initial_repo: str | None
) -> dict[str, Any]:
    """The `/nightshift` modal: a repository and a prompt."""
    options = [{"text": _plain(name, 75), "value": name[:150]} for name, _ in repos[:MAX_OPTIONS]]
    element: dict[str, Any] = {
        "type": "static_select",
        "action_id": "repo",
        "placeholder": _plain("Pick a repository", 150),
        "options": options,
    }
    initial = next((o for o in options if o["value"] == initial_repo), None)
    if initial is not None:
        element["initial_option"] = initial
    return {
        "type": "modal",
        "callback_id": MODAL_CALLBACK,
        "private_metadata": channel_id,
        "title": _plain("Nightshift", 24),
        "submit": _plain("Start", 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            {
                "type": "input",
                "block_id": "repo",
                "label": _plain("Repository", 2000),
                "element": element,
            },
            {
                "type": "input",
                "block_id": "prompt",
                "label": _plain("What should the agent do?", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "prompt",
                    "multiline": True,
                    "max_length": 3000,
                },
            },
        ],
    }
