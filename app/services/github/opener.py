"""The GitHub PR opener: each session's pull request is opened with the token of the person
whose prompt produced the push (see `accounts.py` for how that token is kept); the App's token
is only used to clone and push (and, with `NIGHTSHIFT_PR_FALLBACK=app`, to open the PR on behalf
of someone who has not linked GitHub)."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import Participant, Repo, Session, User
from app.services.github.accounts import GitHubAccounts, SignInRequired
from app.services.pull_requests import PullRequestDeferred, PullRequests
from integrations.github import (
    GitHubApp,
    GitHubAuthError,
    GitHubConfig,
    GitHubError,
    GitHubForbidden,
)
from integrations.github.client import make_client
from integrations.github.pulls import comment, create_pull_request
from workers.events import BranchPushed

log = logging.getLogger("nightshift.github")
MAX_PR_ATTEMPTS = 3


# ---------------------------------------------------------------- the PR opener


def _body(event: BranchPushed, session: Session, base_url: str, requested_by: str | None) -> str:
    summary = event.body.strip() or "(no summary)"
    summary = summary.replace("](/api/sessions/", f"]({base_url}/api/sessions/")
    lines = [summary, "", "---"]
    if requested_by:
        lines.append(f"Requested by @{requested_by}.")
    lines.append(
        f"Opened by Nightshift for session [{session.id}]({base_url}/sessions/{session.id})."
    )
    return "\n".join(lines)


class GitHubPullRequests:
    """Implements `PullRequestOpener` for GitHub: the PR is opened as the person who asked."""

    def __init__(
        self,
        config: GitHubConfig,
        app: GitHubApp,
        accounts: GitHubAccounts | None,
        *,
        base_url: str,
        fallback: str = "none",
    ) -> None:
        self.config = config
        self.app = app
        self.accounts = accounts
        self.base_url = base_url
        self.fallback = fallback

    def sign_in_link(self, session_id: str) -> str:
        """Where a person whose PR waits connects (or renews) their GitHub link."""
        return f"{self.base_url}/auth/github/link?next={quote(f'/sessions/{session_id}')}"

    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        assert author.id is not None
        title = event.title or session.title
        problem = "you have not signed in with GitHub"
        token = None
        if self.accounts is not None:
            try:
                token = self.accounts.user_token(author.id)
            except SignInRequired as exc:
                problem = str(exc)
        if token is not None:
            gh = make_client(self.config, token)
            try:
                pr, created = create_pull_request(
                    gh,
                    repo.url,
                    head=event.branch,
                    base=event.base,
                    title=title,
                    body=_body(event, session, self.base_url, None),
                    draft=event.draft,
                )
                if not created:
                    self._follow_up(gh, repo, pr.number, event, session, None)
                return pr.url, pr.number, pr.state
            except GitHubAuthError as exc:
                problem = f"GitHub refused your token ({exc})"
            except GitHubForbidden:
                if self.fallback != "app":
                    raise  # a permission problem: the error event says which
                problem = "your account may not open it"
        if self.fallback == "app":
            gh = self.app.as_installation(repo.url)
            pr, created = create_pull_request(
                gh,
                repo.url,
                head=event.branch,
                base=event.base,
                title=title,
                body=_body(event, session, self.base_url, author.login),
                draft=event.draft,
            )
            if not created:
                self._follow_up(gh, repo, pr.number, event, session, author.login)
            return pr.url, pr.number, pr.state
        compare = f"{self.config.web_url}/{repo.url}/compare/{event.base}...{event.branch}"
        if self.accounts is None:
            raise PullRequestDeferred(
                f"Branch {event.branch} is pushed. GitHub sign-in is not configured on this "
                f"server, so the pull request cannot be opened in your name: open it yourself.",
                compare,
            )
        raise PullRequestDeferred(
            f"Branch {event.branch} is pushed, but the pull request is opened with your own "
            f"GitHub account and {problem}. Connect your GitHub account and it opens right "
            "away.",
            self.sign_in_link(session.id),
        )

    def _follow_up(
        self,
        gh: Any,
        repo: Repo,
        number: int,
        event: BranchPushed,
        session: Session,
        requested_by: str | None,
    ) -> None:
        """New commits on a PR that was already open: say what they are on its conversation."""
        heading = (
            f"Pushed {event.sha[:10]}: {event.title}" if event.title else f"Pushed {event.sha[:10]}"
        )
        try:
            comment(
                gh,
                repo.url,
                number,
                f"{heading}\n\n{_body(event, session, self.base_url, requested_by)}",
            )
        except GitHubError as exc:
            log.warning("could not comment on %s#%s: %s", repo.url, number, exc)

    def retry_failed(self, pulls: PullRequests, days: float = 7.0) -> list[str]:
        """Open the PRs whose opening failed (GitHub down, rate limited), a few times at most:
        each failed attempt leaves a `pr_failed` error, counted in the session's `pr_failures`,
        and after MAX_PR_ATTEMPTS we stop."""
        with DB(pulls.sessions.engine) as db:
            rows = db.exec(
                select(Session.id)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .where(
                    Repo.forge == "github",
                    col(Session.head_sha).is_not(None),
                    col(Session.pr_number).is_(None),
                    col(Session.updated_at) >= time.time() - days * 86400,
                )
            ).all()
        opened = []
        for session_id in rows:
            failures = pulls.pushed(session_id).pr_failures
            if 0 < failures < MAX_PR_ATTEMPTS and pulls.retry(session_id):
                opened.append(session_id)
        return opened

    def open_pending(self, pulls: PullRequests, user: User, days: float = 30.0) -> list[str]:
        """After `user` signs in: open the PRs their pushed branches are still waiting for."""
        assert user.id is not None
        with DB(pulls.sessions.engine) as db:
            rows = db.exec(
                select(Session)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .join(Participant, col(Participant.session_id) == Session.id)
                .where(
                    Repo.forge == "github",
                    Participant.user_id == user.id,
                    col(Session.head_sha).is_not(None),
                    col(Session.pr_number).is_(None),
                    col(Session.updated_at) >= time.time() - days * 86400,
                )
            ).all()
        opened = []
        for row in rows:
            try:
                if pulls.retry(row.id, only_author=user.id):
                    opened.append(row.id)
            except Exception:
                log.exception("opening the pending PR of %s failed", row.id)
        return opened
