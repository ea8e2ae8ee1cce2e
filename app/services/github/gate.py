"""Who may ask Nightshift for work from GitHub, and what a delivery that asks for nothing is.

Every webhook payload is hostile until checked: a field read here either has the expected
type or the delivery is `Ignored` with a reason (kept in the delivery log). Bots and the App
itself never trigger; a person triggers only with write access to the repository, read from
GitHub (`GET /repos/{o}/{r}/collaborators/{user}/permission`) and cached briefly.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.errors import AppError
from integrations.github import GitHubApp
from integrations.github.issues import WRITERS, permission

PERMISSION_TTL_S = 60.0


class Ignored(AppError):
    """A delivery that asks for nothing we will do; the message is the reason recorded."""


def need(payload: Any, *path: str | int) -> Any:
    """The value at `path` in a payload; Ignored naming the field when it is missing."""
    value = payload
    for step in path:
        if isinstance(step, int):
            ok = isinstance(value, list) and -len(value) <= step < len(value)
        else:
            ok = isinstance(value, dict) and value.get(step) is not None
        if not ok:
            raise Ignored(f"the payload has no {'.'.join(str(p) for p in path)}")
        value = value[step]
    return value


def need_int(payload: Any, *path: str) -> int:
    value = need(payload, *path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Ignored(f"{'.'.join(path)} is not a number")
    return value


def need_str(payload: Any, *path: str, limit: int = 1_000_000) -> str:
    value = need(payload, *path)
    if not isinstance(value, str) or len(value) > limit:
        raise Ignored(f"{'.'.join(path)} is not text")
    return value


def text_of(payload: Any, *path: str) -> str:
    """Optional text (an issue's empty body is `null`)."""
    value = payload
    for step in path:
        value = value.get(step) if isinstance(value, dict) else None
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Person:
    """Who wrote a comment, as GitHub says (linked to a user by `id` only, never by login)."""

    id: int
    login: str
    bot: bool

    @classmethod
    def of(cls, payload: Any, *path: str) -> Person:
        user = need(payload, *path)
        login = need_str(user, "login", limit=100)
        kind = text_of(user, "type")
        return cls(need_int(user, "id"), login, kind == "Bot" or login.endswith("[bot]"))


class Gate:
    """The App's mention, bots, and write access."""

    def __init__(self, app: GitHubApp, ttl_s: float = PERMISSION_TTL_S) -> None:
        self.app = app
        self.ttl_s = ttl_s
        self._guard = threading.Lock()
        self._levels: dict[tuple[str, str], tuple[str, float]] = {}

    def slug(self) -> str:
        return self.app.slug()

    def check_person(self, person: Person) -> None:
        """Bots (the App itself among them) never trigger."""
        if person.login.lower() == f"{self.slug()}[bot]".lower():
            raise Ignored("the App's own comment")
        if person.bot:
            raise Ignored(f"{person.login} is a bot; bots never trigger")

    def request(self, text: str) -> str | None:
        """The text of a comment that mentions the App, without the mention; None without one.
        Ignored when the mention asks for nothing."""
        pattern = re.compile(rf"(?<![\w@/-])@{re.escape(self.slug())}(?![\w-])", re.IGNORECASE)
        if not pattern.search(text):
            return None
        asked = pattern.sub("", text).strip()
        if not asked:
            raise Ignored(f"the mention of @{self.slug()} asks for nothing")
        return asked

    def level(self, repo: str, login: str) -> str:
        key = (repo.lower(), login.lower())
        with self._guard:
            cached = self._levels.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_s:
            return cached[0]
        found = permission(self.app.as_installation(repo), repo, login)
        with self._guard:
            self._levels[key] = (found, time.monotonic())
        return found

    def may_write(self, repo: str, login: str) -> bool:
        return self.level(repo, login) in WRITERS
