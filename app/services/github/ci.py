"""Failing checks come back as work: a `check_run`, `check_suite` or `workflow_run` that
completes with a failure on the head commit of a pull request a session opened queues a
follow-up in that session, with the check's name and the tail of its log.

At most `NIGHTSHIFT_CI_FIX_ATTEMPTS` follow-ups per PR (0: never; the repo's setting, or
`ci_fix_attempts` in its `.nightshift.toml`, overrides it); one per head commit, so the
check run, its suite and its workflow run reporting the same failure ask once. Each attempt,
the cap being reached, and checks passing after an attempt are events on the session (a
`Notice` with the check's link) and rows of `GitHubCiAttempt`. The follow-up is the session
author's prompt: it was their session's code that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.errors import ServiceError
from app.github_tables import GitHubCiAttempt
from app.models import Repo, Session, User
from app.services.github.asks import find_repo
from app.services.github.gate import Ignored, need, need_int, need_str, text_of
from app.services.github.prompts import ci_prompt
from app.services.repo_catalog import spec_of
from app.services.sessions import Sessions
from images.environments import effective_from_record
from images.registry import ImageRecord
from integrations.github import GitHubApp, GitHubError
from integrations.github.checks import (
    FAILED,
    FailedJob,
    failed_jobs_of_run,
    failed_runs_of_suite,
    job_log_tail,
    summary_of,
)
from workers.events import Notice

log = logging.getLogger("nightshift.github.ci")
LOG_TAIL_CHARS = 6000
MAX_JOBS = 3


@dataclass(frozen=True)
class Completed:
    """A check that completed, from any of the three events."""

    kind: str
    repo: Repo
    name: str
    head_sha: str
    conclusion: str
    url: str
    jobs: Callable[[], list[FailedJob]]


class GitHubCI:
    def __init__(
        self,
        engine: Engine,
        sessions: Sessions,
        app: GitHubApp,
        *,
        attempts: int,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.app = app
        self.attempts = attempts
        """NIGHTSHIFT_CI_FIX_ATTEMPTS: follow-ups per PR (0: off); a repo may set its own."""

    # ------------------------------------------------------------ webhooks

    def on_check_run(self, payload: dict[str, Any]) -> None:
        run = need(payload, "check_run")
        repo = self._completed(payload)
        run_id = need_int(payload, "check_run", "id")
        summary = summary_of(run)
        self._handle(
            Completed(
                kind="check run",
                repo=repo,
                name=need_str(payload, "check_run", "name", limit=200),
                head_sha=need_str(payload, "check_run", "head_sha", limit=64),
                conclusion=text_of(run, "conclusion"),
                url=text_of(run, "html_url"),
                jobs=lambda: [FailedJob(run_id, text_of(run, "name"), summary)],
            )
        )

    def on_check_suite(self, payload: dict[str, Any]) -> None:
        suite = need(payload, "check_suite")
        repo = self._completed(payload)
        suite_id = need_int(payload, "check_suite", "id")
        self._handle(
            Completed(
                kind="check suite",
                repo=repo,
                name=text_of(suite, "app", "name") or "check suite",
                head_sha=need_str(payload, "check_suite", "head_sha", limit=64),
                conclusion=text_of(suite, "conclusion"),
                url="",
                jobs=lambda: failed_runs_of_suite(self._gh(repo), repo.url, suite_id),
            )
        )

    def on_workflow_run(self, payload: dict[str, Any]) -> None:
        run = need(payload, "workflow_run")
        repo = self._completed(payload)
        run_id = need_int(payload, "workflow_run", "id")
        self._handle(
            Completed(
                kind="workflow run",
                repo=repo,
                name=need_str(payload, "workflow_run", "name", limit=200),
                head_sha=need_str(payload, "workflow_run", "head_sha", limit=64),
                conclusion=text_of(run, "conclusion"),
                url=text_of(run, "html_url"),
                jobs=lambda: failed_jobs_of_run(self._gh(repo), repo.url, run_id),
            )
        )

    # ------------------------------------------------------------ handling

    def _completed(self, payload: dict[str, Any]) -> Repo:
        action = need_str(payload, "action", limit=64)
        if action != "completed":
            raise Ignored(f"{action}: only a completed check asks")
        return find_repo(self.engine, need_str(payload, "repository", "full_name", limit=200))

    def _gh(self, repo: Repo) -> Any:
        return self.app.as_installation(repo.url)

    def _session(self, check: Completed) -> Session:
        with DB(self.engine) as db:
            row = db.exec(
                select(Session).where(
                    Session.repo_id == check.repo.id,
                    Session.head_sha == check.head_sha,
                    col(Session.pr_number).is_not(None),
                    Session.pr_state == "open",
                )
            ).first()
        if row is None:
            raise Ignored(
                f"{check.head_sha[:12]} is not the head of an open pull request a session opened"
            )
        return row

    def cap(self, repo: Repo) -> int:
        """The repo's `.nightshift.toml` (as its newest image recorded it) decides first, then
        the repo's setting, then NIGHTSHIFT_CI_FIX_ATTEMPTS."""
        with DB(self.engine) as db:
            newest = db.exec(
                select(ImageRecord)
                .where(ImageRecord.repo == repo.name, ImageRecord.status == "ready")
                .order_by(col(ImageRecord.finished_at).desc())
            ).first()
        recorded = newest.file_spec if newest is not None else None
        from_file = effective_from_record(spec_of(repo), recorded).ci_fix_attempts
        if from_file is not None:
            return from_file
        return self.attempts if repo.ci_fix_attempts is None else repo.ci_fix_attempts

    def _handle(self, check: Completed) -> None:
        if check.conclusion == "success":
            self._passed(check)
            return
        if check.conclusion not in FAILED:
            raise Ignored(f"{check.kind} {check.name!r} concluded {check.conclusion or 'nothing'}")
        cap = self.cap(check.repo)
        if cap <= 0:
            raise Ignored("CI fixes are off (NIGHTSHIFT_CI_FIX_ATTEMPTS=0)")
        session = self._session(check)
        assert session.pr_number is not None
        with DB(self.engine) as db:
            used = db.exec(
                select(func.count())
                .select_from(GitHubCiAttempt)
                .where(
                    GitHubCiAttempt.session_id == session.id,
                    col(GitHubCiAttempt.outcome).in_(["queued", "passed"]),
                )
            ).one()
        capped = int(used) >= cap
        if not self._record(session, check, "capped" if capped else "queued"):
            raise Ignored(f"{check.head_sha[:12]} of {session.id} was already sent back")
        if capped:
            self._notice(
                session.id,
                f"Check “{check.name}” failed on {check.head_sha[:12]}; the {cap} CI fix "
                "attempts of this pull request are used up (NIGHTSHIFT_CI_FIX_ATTEMPTS), so "
                "nothing was queued.",
                check.url,
            )
            raise Ignored(f"the CI fix attempts of {session.id} are used up ({cap})")
        prompt = ci_prompt(check.name, check.head_sha, check.url, self._logs(check), self.limit)
        with DB(self.engine) as db:
            author = db.get(User, session.author_id)
        assert author is not None
        try:
            queued = self.sessions.add_prompt(author, session.id, prompt, "github")
        except ServiceError as exc:
            self._set_outcome(session.id, check.head_sha, "failed")
            raise Ignored(f"the CI fix of {session.id} could not be queued: {exc}") from exc
        self._notice(
            session.id,
            f"CI fix attempt {int(used) + 1} of {cap}: check “{check.name}” failed on "
            f"{check.head_sha[:12]}; its log went back to the agent.",
            check.url,
            queued.id,
        )

    @property
    def limit(self) -> int:
        return self.sessions.max_prompt_chars

    def _logs(self, check: Completed) -> list[tuple[str, str]]:
        try:
            jobs = check.jobs()[:MAX_JOBS]
        except GitHubError as exc:
            log.warning("listing the failed jobs of %s failed: %s", check.name, exc)
            return []
        logs = []
        for job in jobs:
            try:
                tail = job_log_tail(self._gh(check.repo), check.repo.url, job.id, LOG_TAIL_CHARS)
            except GitHubError as exc:
                log.warning("reading the log of job %s failed: %s", job.id, exc)
                tail = None
            text = tail if tail is not None else job.summary
            if text:
                logs.append((job.name or check.name, text))
        return logs

    def _record(self, session: Session, check: Completed, outcome: str) -> bool:
        assert session.pr_number is not None
        with DB(self.engine) as db:
            db.add(
                GitHubCiAttempt(
                    session_id=session.id,
                    pr_number=session.pr_number,
                    head_sha=check.head_sha,
                    check_name=check.name[:200],
                    outcome=outcome,
                )
            )
            try:
                db.commit()
            except IntegrityError:
                return False
        return True

    def _set_outcome(self, session_id: str, head_sha: str, outcome: str) -> None:
        with DB(self.engine) as db:
            db.exec(
                update(GitHubCiAttempt)
                .where(
                    col(GitHubCiAttempt.session_id) == session_id,
                    col(GitHubCiAttempt.head_sha) == head_sha,
                )
                .values(outcome=outcome)
            )
            db.commit()

    def _passed(self, check: Completed) -> None:
        """Checks pass on a head that came after fix attempts: their outcome is `passed`."""
        if check.kind == "check run":
            raise Ignored("a passing check run (its suite says whether all passed)")
        session = self._session(check)
        with DB(self.engine) as db:
            pending = db.exec(
                select(GitHubCiAttempt).where(
                    GitHubCiAttempt.session_id == session.id,
                    GitHubCiAttempt.outcome == "queued",
                    GitHubCiAttempt.head_sha != check.head_sha,
                )
            ).all()
            for attempt in pending:
                attempt.outcome = "passed"
                db.add(attempt)
            db.commit()
        if not pending:
            raise Ignored(f"{check.kind} {check.name!r} passed; no fix attempt was waiting on it")
        self._notice(
            session.id,
            f"“{check.name}” passes on {check.head_sha[:12]} after {len(pending)} CI fix "
            "attempt(s).",
            check.url,
        )

    def _notice(
        self, session_id: str, message: str, link: str, prompt_id: int | None = None
    ) -> None:
        """A notice with `prompt_id` says where that queued follow-up came from."""
        notice = Notice(
            message=message, link=link or None, prompt_id=prompt_id, follow_up=prompt_id is not None
        )
        self.sessions.hub.publish(session_id, notice)
