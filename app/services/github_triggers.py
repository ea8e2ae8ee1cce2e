"""GitHub as a client: a mention of the App in an issue starts a session; a mention or a review
on a pull request a session opened queues a follow-up in that session.

Each trigger is attributed to the person who wrote the comment, through the Nightshift user
their GitHub account (by id) is linked to. Someone not linked yet gets a reply with a sign-in
link and the trigger waits (`GitHubTrigger`, state `pending`) until they link, like Slack's
unlinked-user flow. Only people with write access trigger (`github_gate.py`); a trigger is
keyed by the GitHub object it came from, so a redelivery or an edit never asks twice. A
session started from issue #N gets `Fixes #N` in its pull request's description.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine, delete, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import ServiceError
from app.github_tables import GitHubTrigger
from app.models import GitHubAccount, Repo, Session, User
from app.services.github_gate import Gate, Ignored, Person, need, need_int, need_str, text_of
from app.services.github_prompts import (
    comment_prompt,
    issue_prompt,
    review_comment_prompt,
    review_prompt,
)
from app.services.sessions import Sessions
from integrations.github import GitHubApp, GitHubError
from integrations.github.issues import (
    pull_body,
    react,
    reply,
    review_comment_of,
    review_comments,
    set_pull_body,
    thread,
)
from workers.events import Event, Notice, PrOpened

log = logging.getLogger("nightshift.github.triggers")
PENDING_DAYS = 7.0
Target = Literal["issue", "comment", "review_comment"]


@dataclass(frozen=True)
class TriggerSwitches:
    """Which triggers are on (NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS, NIGHTSHIFT_GITHUB_PR_FOLLOWUPS)."""

    issues: bool = True
    pull_requests: bool = True


@dataclass(frozen=True)
class Ask:
    """What one checked comment or review asks for."""

    key: str
    kind: Literal["issue", "follow_up"]
    repo: Repo
    number: int
    person: Person
    url: str
    what: str
    """How the session page names it: "a comment", "a review comment on x.py:3", ..."""
    target: tuple[Target, int] | None
    build: Callable[[], str]
    """The prompt (may read the thread from GitHub: called once the person may ask)."""
    session_id: str | None = None


class GitHubTriggers:
    def __init__(
        self,
        engine: Engine,
        sessions: Sessions,
        app: GitHubApp,
        gate: Gate,
        *,
        linked_user_id: Callable[[int], int | None] | None,
        switches: TriggerSwitches,
        base_url: str,
        submit: Callable[[Callable[[], object]], object],
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.app = app
        self.gate = gate
        self.linked_user_id = linked_user_id
        """GitHub user id → Nightshift user id (None when GitHub sign-in is not configured)."""
        self.switches = switches
        self.base_url = base_url
        self.submit = submit

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
        self._handle(
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
        common = dict(
            key=f"comment:{comment_id}",
            repo=repo,
            number=number,
            person=person,
            url=url,
            target=("comment", comment_id),
        )
        if on_pr:
            session_id = self._pr_session(repo, number)
            self._handle(
                Ask(
                    **common,  # type: ignore[arg-type]
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

        self._handle(Ask(**common, kind="issue", what="an issue comment", build=build))  # type: ignore[arg-type]

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
        self._handle(
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
            return review_prompt(person.login, body, comments, url, self.limit)

        self._handle(
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
        full_name = need_str(payload, "repository", "full_name", limit=200)
        with DB(self.engine) as db:
            repo = db.exec(
                select(Repo).where(
                    Repo.forge == "github", func.lower(Repo.url) == full_name.lower()
                )
            ).first()
        if repo is None:
            raise Ignored(f"{full_name} is not a repository Nightshift knows")
        return repo

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

    # ------------------------------------------------------------ handling

    def _handle(self, ask: Ask) -> None:
        row = self._claim(ask)
        try:
            self._ask(ask, row)
        except Ignored:
            raise
        except Exception:
            # GitHub failed us half-way: forget the claim so the delivery's retry asks again.
            with DB(self.engine) as db:
                db.exec(delete(GitHubTrigger).where(col(GitHubTrigger.id) == row))
                db.commit()
            raise

    def _ask(self, ask: Ask, row: int) -> None:
        if not self.gate.may_write(ask.repo.url, ask.person.login):
            self._refuse(ask, row)
        if ask.target is not None:
            try:
                react(self._gh(ask.repo), ask.repo.url, ask.target[0], ask.target[1])
            except GitHubError as exc:
                log.warning("reacting to %s failed: %s", ask.url, exc)
        prompt = ask.build()
        user_id = self.linked_user_id(ask.person.id) if self.linked_user_id else None
        self._set(row, prompt=prompt)
        if user_id is None:
            if self.linked_user_id is None:
                self._set(row, state="failed", reason="GitHub sign-in is not configured")
                self._say(
                    ask.repo.url,
                    ask.number,
                    f"@{ask.person.login} this Nightshift server has no GitHub sign-in, so it "
                    "cannot tell who you are there; ask its operator to set it up.",
                )
                raise Ignored("GitHub sign-in is not configured: nobody to attribute it to")
            self._say(
                ask.repo.url,
                ask.number,
                f"@{ask.person.login} I will start on this once your GitHub account is linked "
                f"to Nightshift: sign in with GitHub at {self.base_url}/auth/github/login "
                "(already a Nightshift user? link GitHub from your account). Nothing else to do "
                "after that.",
            )
            return
        with DB(self.engine) as db:
            user = db.get(User, user_id)
        assert user is not None
        problem = self._run(row, user)
        if problem is not None:
            raise Ignored(problem)

    def _claim(self, ask: Ask) -> int:
        """The trigger's row, new; Ignored when this GitHub object already asked."""
        with DB(self.engine) as db:
            row = GitHubTrigger(
                key=ask.key,
                kind=ask.kind,
                repo=ask.repo.url,
                number=ask.number,
                github_user_id=ask.person.id,
                login=ask.person.login,
                url=ask.url,
                session_id=ask.session_id,
                reason=ask.what,
            )
            db.add(row)
            try:
                db.commit()
            except IntegrityError:
                raise Ignored(f"{ask.key} was already handled") from None
            assert row.id is not None
            return row.id

    def _set(self, row_id: int, **values: Any) -> None:
        with DB(self.engine) as db:
            db.exec(
                update(GitHubTrigger)
                .where(col(GitHubTrigger.id) == row_id)
                .values(updated_at=time.time(), **values)
            )
            db.commit()

    def _refuse(self, ask: Ask, row_id: int) -> None:
        reason = f"@{ask.person.login} has no write access to {ask.repo.url}"
        with DB(self.engine) as db:
            told = db.exec(
                select(GitHubTrigger.id).where(
                    GitHubTrigger.github_user_id == ask.person.id,
                    GitHubTrigger.repo == ask.repo.url,
                    GitHubTrigger.number == ask.number,
                    GitHubTrigger.state == "refused",
                )
            ).first()
        self._set(row_id, state="refused", reason=reason)
        if told is None:
            self._say(
                ask.repo.url,
                ask.number,
                f"Thanks @{ask.person.login}! Only people with write access to this repository "
                "can ask me for work, so I will leave this one to a maintainer.",
            )
        raise Ignored(reason)

    def _say(self, repo: str, number: int, text: str) -> None:
        try:
            reply(self.app.as_installation(repo), repo, number, text)
        except GitHubError as exc:
            log.warning("replying on %s#%s failed: %s", repo, number, exc)

    def _run(self, row_id: int, user: User) -> str | None:
        """Start the session or queue the follow-up; None, or why it could not."""
        with DB(self.engine) as db:
            row = db.get(GitHubTrigger, row_id)
        assert row is not None
        try:
            if row.kind == "issue":
                repo = self._repo({"repository": {"full_name": row.repo}})
                session = self.sessions.create(user, repo.name, row.prompt, None, "github")
                self._set(row_id, state="started", session_id=session.id)
                self._say(
                    row.repo,
                    row.number,
                    f"@{row.login} on it: [Nightshift session {session.id}]"
                    f"({self.base_url}/sessions/{session.id}). Its pull request will fix "
                    f"#{row.number}.",
                )
                return None
            assert row.session_id is not None
            prompt = self.sessions.add_prompt(user, row.session_id, row.prompt, "github")
            self.sessions.hub.publish(
                row.session_id,
                Notice(
                    message=f"Follow-up from GitHub: {row.reason} by @{row.login}",
                    link=row.url or None,
                    prompt_id=prompt.id,
                ),
            )
            self._set(row_id, state="queued")
            return None
        except (ServiceError, Ignored) as exc:
            self._set(row_id, state="failed", reason=str(exc)[:500])
            self._say(row.repo, row.number, f"@{row.login} I could not do that: {exc}")
            return str(exc)

    # ------------------------------------------------------------ after sign-in

    def start_pending(self, user: User, days: float = PENDING_DAYS) -> list[int]:
        """After `user` links GitHub: run the triggers that waited for them; their ids."""
        with DB(self.engine) as db:
            github_ids = db.exec(
                select(GitHubAccount.github_id).where(GitHubAccount.user_id == user.id)
            ).all()
            rows = db.exec(
                select(GitHubTrigger.id).where(
                    col(GitHubTrigger.github_user_id).in_(list(github_ids)),
                    GitHubTrigger.state == "pending",
                    col(GitHubTrigger.created_at) >= time.time() - days * 86400,
                )
            ).all()
        done = []
        for row_id in rows:
            assert row_id is not None
            with DB(self.engine) as db:
                claimed = db.exec(
                    update(GitHubTrigger)
                    .where(col(GitHubTrigger.id) == row_id, col(GitHubTrigger.state) == "pending")
                    .values(state="starting", updated_at=time.time())
                )
                db.commit()
            if claimed.rowcount == 1 and self._run(row_id, user) is None:
                done.append(row_id)
        return done

    # ------------------------------------------------------------ Fixes #N

    def on_event(self, session_id: str, event: Event) -> None:
        """A hub handler: the PR of a session started from an issue says it fixes the issue."""
        if not isinstance(event, PrOpened):
            return
        with DB(self.engine) as db:
            row = db.exec(
                select(GitHubTrigger).where(
                    GitHubTrigger.session_id == session_id, GitHubTrigger.kind == "issue"
                )
            ).first()
        if row is not None:
            repo, issue, pr = row.repo, row.number, event.number
            self.submit(lambda: self.add_fixes(repo, issue, pr))

    def add_fixes(self, repo: str, issue: int, pr: int) -> None:
        line = f"Fixes #{issue}"
        try:
            gh = self.app.as_installation(repo)
            body = pull_body(gh, repo, pr)
            if line.lower() not in body.lower():
                set_pull_body(gh, repo, pr, f"{body.rstrip()}\n\n{line}".lstrip())
        except GitHubError as exc:
            log.warning("could not add %r to %s#%s: %s", line, repo, pr, exc)
