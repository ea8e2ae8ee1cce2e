"""Slack message text: mentions, repository references, commands, and mrkdwn escaping.

Slack sends text with its own markup: `<@U123>` for a user, `<#C123|name>` for a channel,
`<https://x|label>` for a link, and `&amp; &lt; &gt;` for the three characters it escapes.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#(C[A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>\s]+)(?:\|([^>]*))?>")
_BARE_URL = re.compile(r"https?://[^\s<>|]+")
_REPO_REF = re.compile(r"(?<![\w/])repo:\s*([A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9_])?)", re.I)
_HOSTED = re.compile(
    r"^https?://(?:www\.)?(?P<host>[^/\s]+)/(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(?:\.git)?(?:[/#?].*)?$"
)
_STOP_WORDS = {"stop", "cancel", "stop it", "stop please", "please stop", "abort"}
_NEW = re.compile(r"^\s*new\s*:\s*", re.I)
_MODEL = re.compile(r"(?<![\w/])model:([A-Za-z0-9][\w.:/@-]*[\w])", re.I)
"""`model:NAME`, written without a space (so prose like "the data model: users" is not one)."""


def mentions(text: str, user_id: str) -> bool:
    """Whether `text` mentions `user_id` (`<@U123>`)."""
    return bool(user_id) and any(m.group(1) == user_id for m in _USER.finditer(text))


def links(text: str) -> list[str]:
    """Every URL in the message, Slack-formatted (`<url|label>`) or bare, in order."""
    found: list[str] = []
    for match in _LINK.finditer(text):
        found.append(match.group(1))
    for match in _BARE_URL.finditer(_LINK.sub(" ", text)):
        found.append(match.group(0).rstrip(".,);"))
    return found


@dataclass(frozen=True)
class RepoRef:
    """A repository the message names: `repo:owner/name`, `repo:name` or a URL into it."""

    ref: str
    """`owner/name`, or a bare name from `repo:`."""
    url: str | None = None
    """The URL it came from, when it came from one."""


def repo_refs(text: str) -> list[RepoRef]:
    """Repositories the message names explicitly, `repo:` first, then URLs, without repeats."""
    refs: list[RepoRef] = []
    seen: set[str] = set()
    plain = _LINK.sub(lambda m: " " + m.group(1) + " ", text)
    for match in _REPO_REF.finditer(plain):
        ref = match.group(1).rstrip("/").removesuffix(".git")
        if ref.lower() not in seen:
            seen.add(ref.lower())
            refs.append(RepoRef(ref))
    for url in links(text):
        hosted = _HOSTED.match(url)
        if hosted is None:
            continue
        ref = f"{hosted['owner']}/{hosted['name']}"
        if ref.lower() not in seen:
            seen.add(ref.lower())
            refs.append(RepoRef(ref, url))
    return refs


def to_plain(text: str, bot_user_id: str = "") -> str:
    """Slack markup to plain text for a prompt: the bot's own mention and `repo:` refs go,
    other mentions and links become readable, entities are unescaped."""

    def user(match: re.Match[str]) -> str:
        if match.group(1) == bot_user_id:
            return ""
        return "@" + (match.group(2) or match.group(1))

    def link(match: re.Match[str]) -> str:
        url, label = match.group(1), match.group(2)
        if url.startswith("mailto:"):
            return label or url.removeprefix("mailto:")
        return url if not label or label in url else f"{label} ({url})"

    text = _USER.sub(user, text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    text = _LINK.sub(link, text)
    text = _REPO_REF.sub("", text)
    text = html.unescape(text)
    lines = [re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def is_stop(plain: str) -> bool:
    """`stop` (or `cancel`), alone, as the whole message."""
    return plain.strip().lower().rstrip("!.").strip() in _STOP_WORDS


def split_new(plain: str) -> tuple[bool, str]:
    """`new: <prompt>` asks for a new session in a thread that already has one."""
    match = _NEW.match(plain)
    if match is None:
        return False, plain
    return True, plain[match.end() :].strip()


def split_model(plain: str) -> tuple[str | None, str]:
    """`model:NAME` anywhere in the text picks the session's model; the prompt is the rest.
    The first one counts; every one is removed."""
    match = _MODEL.search(plain)
    if match is None:
        return None, plain
    rest = _MODEL.sub(" ", plain)
    return match.group(1), re.sub(r"[ \t]{2,}", " ", rest).strip()


def escape(text: str) -> str:
    """Escape the three characters mrkdwn treats as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quote(text: str, limit: int = 300) -> str:
    """A short `>` quote of someone's words for a Slack message."""
    text = text.strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return "\n".join("> " + escape(line) for line in text.splitlines() or [""])
