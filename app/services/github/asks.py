"""Running what GitHub asked for: one `Ask` (a checked mention or review) is claimed by the
GitHub object it came from, checked for write access, acknowledged with 👀, and then starts a
session or queues a follow-up as the person's linked user, or waits (`pending`) until they
link GitHub. Also: the waiting asks run after sign-in, and a session started from an issue
gets `Fixes #N` in its pull request's description.
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
from app.models import GitHubAccount, Repo, User
from app.services.github.gate import Gate, Ignored, Person
from app.services.sessions import Sessions
from integrations.github import GitHubApp, GitHubError
from integrations.github.issues import pull_body, react, reply, set_pull_body
from workers.events import Event, Notice, PrOpened

log = logging.getLogger("nightshift.github.triggers")
PENDING_DAYS = 7.0
Target = Literal["issue", "comment", "review_comment"]


def repos_named(engine: Engine, full_name: str) -> list[Repo]:
    """The repos registered as GitHub's `owner/name`, removed ones too."""
    with DB(engine) as db:
        return list(
            db.exec(
                select(Repo).where(
                    Repo.forge == "github", func.lower(Repo.url) == full_name.lower()
                )
            ).all()
        )


def find_repo(engine: Engine, full_name: str) -> Repo:
    """The GitHub repository Nightshift works on as `owner/name`; Ignored when there is none
    or it was removed (a removed repo takes no work from GitHub)."""
    rows = repos_named(engine, full_name)
    repo = next((r for r in rows if r.removed_at is None), None)
    if repo is None:
        why = "was removed from Nightshift" if rows else "is not a repository Nightshift knows"
        raise Ignored(f"{full_name} {why}")
    return repo


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


class Asks:
    def __init__(
        self,
        engine: Engine,
        sessions: Sessions,
        app: GitHubApp,
        gate: Gate,
        *,
        linked_user_id: Callable[[int], int | None] | None,
        base_url: str,
        submit: Callable[[Callable[[], object]], object],
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.app = app
        self.gate = gate
        self.linked_user_id = linked_user_id
        """GitHub user id → Nightshift user id (None when GitHub sign-in is not configured)."""
        self.base_url = base_url
        self.submit = submit

    # ------------------------------------------------------------ handling

    def handle(self, ask: Ask) -> None:
        """Claim, check write access, react, then start (or wait for the person to link)."""
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
                react(
                    self.app.as_installation(ask.repo.url),
                    ask.repo.url,
                    ask.target[0],
                    ask.target[1],
                )
            except GitHubError as exc:
                log.warning("reacting to %s failed: %s", ask.url, exc)
        prompt = ask.build()
        user_id = self.linked_user_id(ask.person.id) if self.linked_user_id else None
        self._set(row, prompt=prompt)
        if user_id is None and self.linked_user_id is not None:
            self._set(row, state="pending")
            linked = self.linked_user_id(ask.person.id)
            if linked is not None:
                # They linked in the meantime, and the sign-in's pass may have come too early.
                with DB(self.engine) as db:
                    now_linked = db.get(User, linked)
                if now_linked is not None:
                    self.start_pending(now_linked)
                    return
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

    def handled(self, keys: set[str]) -> set[str]:
        """Which of these GitHub objects already asked for something."""
        if not keys:
            return set()
        with DB(self.engine) as db:
            return set(
                db.exec(select(GitHubTrigger.key).where(col(GitHubTrigger.key).in_(keys))).all()
            )

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
                state="received",
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
                repo = find_repo(self.engine, row.repo)
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
                    follow_up=True,
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
