"""GitHub as a client: a mention of the App in an issue starts a session; a mention or a review
on a pull request a session opened queues a follow-up in that session.

Each trigger is attributed to the person who wrote the comment, through the Nightshift user
their GitHub account (by id) is linked to. Someone not linked yet gets a reply with a sign-in
link and the trigger waits (`GitHubTrigger`, state `pending`) until they link, like Slack's
unlinked-user flow. Only people with write access trigger (`gate.py`); a trigger is
keyed by the GitHub object it came from, so a redelivery or an edit never asks twice. A
session started from issue #N gets `Fixes #N` in its pull request's description.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import Repo, Session, User
from app.services.github.asks import Ask, Asks, find_repo
from app.services.github.gate import Gate, Ignored, Person, need, need_int, need_str, text_of
from app.services.github.prompts import (
    comment_prompt,
    issue_prompt,
    review_comment_prompt,
    review_prompt,
)
from app.services.sessions import Sessions
from integrations.github import GitHubApp
from integrations.github.issues import review_comment_of, review_comments, thread


@dataclass(frozen=True)
class TriggerSwitches:
    """Which triggers are on (NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS, NIGHTSHIFT_GITHUB_PR_FOLLOWUPS)."""

    issues: bool = True
    pull_requests: bool = True


class GitHubTriggers:
    def __init__(
        self,
        engine: Engine,
        sessions: Sessions,
        app: GitHubApp,
        gate: Gate,
        asks: Asks,
        *,
        switches: TriggerSwitches,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.app = app
        self.gate = gate
        self.asks = asks
        """What runs a checked ask (and the asks that wait for a person to link GitHub)."""
        self.switches = switches

    def start_pending(self, user: User) -> list[int]:
        """After `user` links GitHub: what they asked for while unlinked runs now."""
        return self.asks.start_pending(user)

    @property
    def limit(self) -> int:
        return self.sessions.max_prompt_chars

    # ------------------------------------------------------------ webhooks

    def on_issues(self, payload: dict[str, Any]) -> None:
        action = need_str(payload, "action", limit=64)
        if action != "opened":
            raise Ignored(f"issues.{action}: only a new issue's mention starts a session")
        if not self.switches.issues:
            raise Ignored("issue triggers are off (NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS)")
        issue = need(payload, "issue")
        person = Person.of(payload, "issue", "user")
        self.gate.check_person(person)
        request = self._request(text_of(issue, "body"))
        repo = self._repo(payload)
        number = need_int(payload, "issue", "number")
        title = need_str(payload, "issue", "title", limit=1000)
        issue_id = need_int(payload, "issue", "id")
        self.asks.handle(
            Ask(
                key=f"issue:{issue_id}",
                kind="issue",
                repo=repo,
                number=number,
                person=person,
                url=need_str(payload, "issue", "html_url", limit=500),
                what="an issue",
                target=("issue", number),
                build=lambda: issue_prompt(
                    repo.url, number, title, None, [], request, person.login, self.limit
                ),
            )
        )

    def on_issue_comment(self, payload: dict[str, Any]) -> None:
        action = need_str(payload, "action", limit=64)
        if action != "created":
            raise Ignored(
                f"issue_comment.{action}: only a new comment asks (an edited comment never "
                "starts a second session)"
            )
        issue = need(payload, "issue")
        comment = need(payload, "comment")
        on_pr = isinstance(issue.get("pull_request"), dict)
        self._check_switch(on_pr)
        person = Person.of(payload, "comment", "user")
        self.gate.check_person(person)
        request = self._request(text_of(comment, "body"))
        repo = self._repo(payload)
        number = need_int(payload, "issue", "number")
        comment_id = need_int(payload, "comment", "id")
        url = need_str(payload, "comment", "html_url", limit=500)
        common: dict[str, Any] = dict(
            key=f"comment:{comment_id}",
            repo=repo,
            number=number,
            person=person,
            url=url,
            target=("comment", comment_id),
        )
        if on_pr:
            session_id = self._pr_session(repo, number)
            self.asks.handle(
                Ask(
                    **common,
                    kind="follow_up",
                    what="a comment",
                    build=lambda: comment_prompt(person.login, request, url, self.limit),
                    session_id=session_id,
                )
            )
            return
        title = need_str(payload, "issue", "title", limit=1000)
        body = text_of(issue, "body")

        def build() -> str:
            earlier = [c for c in thread(self._gh(repo), repo.url, number) if c.id < comment_id]
            return issue_prompt(
                repo.url, number, title, body, earlier, request, person.login, self.limit
            )

        self.asks.handle(Ask(**common, kind="issue", what="an issue comment", build=build))

    def on_pull_request_review_comment(self, payload: dict[str, Any]) -> None:
        action = need_str(payload, "action", limit=64)
        if action != "created":
            raise Ignored(f"pull_request_review_comment.{action}: only a new comment asks")
        self._check_switch(True)
        raw = need(payload, "comment")
        person = Person.of(payload, "comment", "user")
        self.gate.check_person(person)
        request = self._request(text_of(raw, "body"))
        need_int(payload, "comment", "id")
        comment = review_comment_of(raw)
        repo = self._repo(payload)
        number = need_int(payload, "pull_request", "number")
        self.asks.handle(
            Ask(
                key=f"review_comment:{comment.id}",
                kind="follow_up",
                repo=repo,
                number=number,
                person=person,
                url=comment.url,
                what=f"a review comment on {comment.path}"
                + (f":{comment.line}" if comment.line else ""),
                target=("review_comment", comment.id),
                build=lambda: review_comment_prompt(comment, request, self.limit),
                session_id=self._pr_session(repo, number),
            )
        )

    def on_pull_request_review(self, payload: dict[str, Any]) -> None:
        action = need_str(payload, "action", limit=64)
        review = need(payload, "review")
        state = need_str(payload, "review", "state", limit=64).lower()
        if action != "submitted" or state != "changes_requested":
            raise Ignored(
                f"pull_request_review.{action} ({state}): only a review requesting changes asks"
            )
        self._check_switch(True)
        person = Person.of(payload, "review", "user")
        self.gate.check_person(person)
        repo = self._repo(payload)
        number = need_int(payload, "pull_request", "number")
        review_id = need_int(payload, "review", "id")
        url = need_str(payload, "review", "html_url", limit=500)
        body = text_of(review, "body")
        session_id = self._pr_session(repo, number)

        def build() -> str:
            comments = review_comments(self._gh(repo), repo.url, number, review_id)
            asked = self.asks.handled({f"review_comment:{c.id}" for c in comments})
            # A line comment that mentioned the App already asked on its own.
            fresh = [c for c in comments if f"review_comment:{c.id}" not in asked]
            return review_prompt(person.login, body, fresh, url, self.limit)

        self.asks.handle(
            Ask(
                key=f"review:{review_id}",
                kind="follow_up",
                repo=repo,
                number=number,
                person=person,
                url=url,
                what="a review requesting changes",
                target=None,
                build=build,
                session_id=session_id,
            )
        )

    # ------------------------------------------------------------ checks

    def _check_switch(self, on_pr: bool) -> None:
        if on_pr and not self.switches.pull_requests:
            raise Ignored("pull request follow-ups are off (NIGHTSHIFT_GITHUB_PR_FOLLOWUPS)")
        if not on_pr and not self.switches.issues:
            raise Ignored("issue triggers are off (NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS)")

    def _request(self, text: str) -> str:
        request = self.gate.request(text)
        if request is None:
            raise Ignored(f"no mention of @{self.gate.slug()}")
        return request

    def _repo(self, payload: dict[str, Any]) -> Repo:
        return find_repo(self.engine, need_str(payload, "repository", "full_name", limit=200))

    def _pr_session(self, repo: Repo, number: int) -> str:
        with DB(self.engine) as db:
            session_id = db.exec(
                select(Session.id)
                .where(Session.repo_id == repo.id, Session.pr_number == number)
                .order_by(col(Session.created_at).desc())
            ).first()
        if session_id is None:
            raise Ignored(f"{repo.url}#{number} is not a pull request a Nightshift session opened")
        return str(session_id)

    def _gh(self, repo: Repo) -> Any:
        return self.app.as_installation(repo.url)


def build_triggers(
    engine: Engine,
    sessions: Sessions,
    app: GitHubApp,
    *,
    linked_user_id: Callable[[int], int | None] | None,
    switches: TriggerSwitches,
    base_url: str,
    submit: Callable[[Callable[[], object]], object],
) -> GitHubTriggers:
    """The triggers and what they use (the event table sends `pr_opened` to
    `triggers.asks.on_event`, which adds `Fixes #N`)."""
    gate = Gate(app)
    asks = Asks(
        engine,
        sessions,
        app,
        gate,
        linked_user_id=linked_user_id,
        base_url=base_url,
        submit=submit,
    )
    return GitHubTriggers(engine, sessions, app, gate, asks, switches=switches)
