"""Pull requests: opening each session's PR through its forge's opener, and the local forge's
own PR records (in the control DB, one per session branch)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine, func
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import AppError, NotFound
from app.models import PullRequest, Repo, Session, User
from workers.events import BranchPushed, ErrorRaised, Event, Notice, PrOpened

if TYPE_CHECKING:
    from app.services.sessions import Sessions

log = logging.getLogger("nightshift.pulls")


class PullRequestOpener(Protocol):
    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        """Open (or find) the PR for a pushed branch; returns (url, number, state)."""
        ...


class PullRequestDeferred(AppError):
    """An opener cannot open the PR yet; the message (and link) tell the person what to do.

    The session gets a `Notice` instead of an error: the branch is pushed and nothing failed.
    """

    def __init__(self, message: str, link: str | None = None) -> None:
        super().__init__(message)
        self.link = link


class LocalPullRequests:
    """Implements `PullRequestOpener` for repositories on this machine."""

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url
        self.merging: set[int] = set()
        """PRs being merged or closed now; a second request meanwhile is refused."""

    def url(self, pr_id: int) -> str:
        """The PR's review page (`/pulls/{id}`, web/pull.html), the link every client shows."""
        return f"{self.base_url}/pulls/{pr_id}"

    def open(
        self, session: Session, repo: Repo, author: User, event: BranchPushed
    ) -> tuple[str, int, str]:
        assert repo.id is not None and author.id is not None
        with DB(self.engine, expire_on_commit=False) as db:
            existing = db.exec(
                select(PullRequest).where(
                    PullRequest.repo_id == repo.id,
                    PullRequest.head == event.branch,
                    PullRequest.state == "open",  # after a merge or close, new work: a new PR
                )
            ).first()
            if existing is not None:
                existing.head_sha = event.sha
                existing.checks, existing.checks_sha = session.last_verify, event.sha
                existing.draft = event.draft  # a later push that passes verify is ready
                existing.updated_at = time.time()
                assert existing.id is not None
                existing.url = self.url(existing.id)  # records from before the review page
                db.add(existing)
                db.commit()
                return existing.url, existing.number, existing.state
            number = (
                int(
                    db.exec(
                        select(func.coalesce(func.max(PullRequest.number), 0)).where(
                            PullRequest.repo_id == repo.id
                        )
                    ).one()
                )
                + 1
            )
            pr = PullRequest(
                repo_id=repo.id,
                number=number,
                session_id=session.id,
                title=event.title or session.title,
                body=_body(event, session, self.base_url),
                author_id=author.id,
                base=event.base,
                head=event.branch,
                head_sha=event.sha,
                url="",
                draft=event.draft,
                checks=session.last_verify,
                checks_sha=event.sha,
            )
            db.add(pr)
            db.flush()
            assert pr.id is not None
            pr.url = self.url(pr.id)
            db.add(pr)
            db.commit()
            return pr.url, pr.number, pr.state

    def list(self, repo: Repo) -> list[PullRequest]:
        with DB(self.engine) as db:
            return list(
                db.exec(
                    select(PullRequest)
                    .where(PullRequest.repo_id == repo.id)
                    .order_by(col(PullRequest.number).desc())
                ).all()
            )

    def by_id(self, pr_id: int) -> PullRequest:
        with DB(self.engine) as db:
            pr = db.get(PullRequest, pr_id)
        if pr is None:
            raise NotFound(f"no pull request {pr_id}")
        return pr

    def save(self, pr: PullRequest) -> PullRequest:
        pr.updated_at = time.time()
        with DB(self.engine, expire_on_commit=False) as db:
            db.add(pr)
            db.commit()
        return pr

    def keep_checks(self, pr_id: int, checks: dict[str, object] | None, sha: str) -> None:
        """Keep the checks found for head `sha` (a row from before they were kept on it)."""
        with DB(self.engine) as db:
            pr = db.get(PullRequest, pr_id)
            if pr is not None and pr.head_sha == sha:
                pr.checks, pr.checks_sha = checks, sha
                db.add(pr)
                db.commit()

    def get(self, repo: Repo, number: int) -> PullRequest:
        with DB(self.engine) as db:
            pr = db.exec(
                select(PullRequest).where(
                    PullRequest.repo_id == repo.id, PullRequest.number == number
                )
            ).first()
        if pr is None:
            raise NotFound(f"{repo.name} has no pull request #{number}")
        return pr


def _body(event: BranchPushed, session: Session, base_url: str) -> str:
    """The model's summary and verify results (from the worker), then the session's link."""
    summary = event.body.strip() or "(no summary)"
    # The worker links the session's screenshots by path; the PR is read elsewhere.
    summary = summary.replace("](/api/sessions/", f"]({base_url}/api/sessions/")
    summary = summary.replace("](/shared/artifacts/", f"]({base_url}/shared/artifacts/")
    link = f"[{session.id}]({base_url}/sessions/{session.id})"
    return f"{summary}\n\n---\nOpened by Nightshift for session {link}."


class PullRequests:
    """Opens each session's PR through its forge's opener once a branch is pushed."""

    def __init__(self, sessions: Sessions, openers: Mapping[str, PullRequestOpener]) -> None:
        self.sessions = sessions
        self.hub = sessions.hub
        self.files = sessions.files
        self.openers = dict(openers)
        """Forge name (`local`, `github`) → the opener of its PRs."""
        self._pr_locks: dict[str, threading.Lock] = {}
        self._pr_locks_guard = threading.Lock()

    def on_pushed(self, session_id: str, event: Event) -> None:
        """The event table's `branch_pushed` row (run after the publish lock is released:
        opening may wait on the network)."""
        if isinstance(event, BranchPushed):
            self.open(session_id, event)

    def _pr_lock(self, session_id: str) -> threading.Lock:
        with self._pr_locks_guard:
            return self._pr_locks.setdefault(session_id, threading.Lock())

    def open(self, session_id: str, event: BranchPushed, only_if_missing: bool = False) -> None:
        """Open (or update) the session's PR. Runs outside the session's publish lock (it may
        wait on the network) but under a per-session lock, so it never runs twice at once."""
        with self._pr_lock(session_id):
            row = self.sessions.get(session_id)
            if only_if_missing and row.pr_number is not None:
                return
            repo = self.sessions.repos.by_id(row.repo_id)
            opener = self.openers.get(repo.forge)
            if opener is None:
                self.hub.publish(
                    session_id,
                    ErrorRaised(
                        code="no_forge", message=f"no pull-request opener for forge {repo.forge!r}"
                    ),
                )
                return
            prompt = self.files.get(session_id).prompt(event.prompt_id) if event.prompt_id else None
            author = self.sessions.users.get(prompt.author_id if prompt else row.author_id)
            assert author is not None
            try:
                url, number, state = opener.open(row, repo, author, event)
            except PullRequestDeferred as exc:
                self.hub.publish(
                    session_id, Notice(message=str(exc), link=exc.link, prompt_id=event.prompt_id)
                )
                return
            except Exception as exc:
                log.exception("opening the PR of %s failed", session_id)
                self.hub.publish(
                    session_id,
                    ErrorRaised(
                        code="pr_failed",
                        message=f"the branch was pushed but opening the PR failed: {exc}",
                    ),
                )
                return
            with self.hub.lock(session_id):
                current = self.sessions.get(session_id)
                if current.pr_number != number or current.pr_url != url:
                    self.hub.publish(
                        session_id,
                        PrOpened(
                            url=url,
                            number=number,
                            state=state,
                            prompt_id=event.prompt_id,
                            attempt=event.attempt,
                        ),
                    )

    def pushed(self, session_id: str) -> Session:
        """The session's row with its last push and PR failures (filled from its events once,
        for a row from before they were columns)."""
        row = self.sessions.get(session_id)
        if row.head_sha is None or row.last_push is not None:
            return row
        return self.sessions.index.fill_from_log(row, self.sessions.store(session_id))

    def retry(self, session_id: str, only_author: int | None = None) -> bool:
        """Try again to open the PR of the session's last pushed branch (say, once its author
        has signed in). With `only_author`, only when that user prompted the push. True when
        the session has a PR afterwards."""
        row = self.pushed(session_id)
        if row.last_push is None:
            return False
        pushed = BranchPushed.model_validate(row.last_push)
        if only_author is not None:
            store = self.files.get(session_id)
            prompt = store.prompt(pushed.prompt_id) if pushed.prompt_id else None
            author = prompt.author_id if prompt else row.author_id
            if author != only_author:
                return False
        self.open(session_id, pushed, only_if_missing=True)
        return self.sessions.get(session_id).pr_number is not None
