"""Reviewing local pull requests: read one with its commits, checks and diff; merge or close it.

Who may merge or close: the session's author, the PR's author (who prompted the push) and the
logins in NIGHTSHIFT_ADMINS. Anyone signed in may read. A merge or close publishes the same
`PrStateChanged` a GitHub webhook does, so the session index and the stats count it.
"""

from __future__ import annotations

import logging
import time

from app.errors import Conflict, Forbidden, NotFound, Unavailable
from app.models import PullRequest, Session, User
from app.schemas_pulls import (
    CheckPublic,
    ChecksPublic,
    CommitPublic,
    PersonPublic,
    PullDetail,
    PullDiff,
    PullFile,
)
from app.services.pull_requests import LocalPullRequests
from app.services.session_index import verify_before
from app.services.sessions import Sessions
from integrations.forge.base import ForgeError
from integrations.forge.local import BaseCheckedOut, LocalForge, MergeConflict
from workers.events import PrStateChanged, VerifyRan

log = logging.getLogger("nightshift.pulls")


class LocalPullReview:
    def __init__(
        self,
        pulls: LocalPullRequests,
        sessions: Sessions,
        forge: LocalForge,
        admins: frozenset[str],
    ) -> None:
        self.pulls = pulls
        self.sessions = sessions
        self.forge = forge
        self.admins = admins

    def may_merge(self, user: User, pr: PullRequest, session: Session) -> bool:
        return user.id in (pr.author_id, session.author_id) or user.login.lower() in self.admins

    def _person(self, user_id: int | None) -> PersonPublic | None:
        user = self.sessions.users.get(user_id) if user_id is not None else None
        return PersonPublic(login=user.login, name=user.name) if user else None

    async def detail(self, pr_id: int, user: User) -> PullDetail:
        pr = self.pulls.by_id(pr_id)
        session = self.sessions.get(pr.session_id)
        repo = self.sessions.repos.by_id(pr.repo_id)
        commits: list[CommitPublic] = []
        error = None
        try:
            found = await self.forge.commits(repo.url, pr.merge_base or pr.base, pr.head_sha)
            commits = [CommitPublic(**vars(c)) for c in found]
        except ForgeError as exc:
            error = str(exc)
        author = self._person(pr.author_id)
        assert author is not None
        return PullDetail(
            id=pr_id,
            number=pr.number,
            repo=repo.name,
            session_id=pr.session_id,
            title=pr.title,
            body=pr.body,
            author=author,
            base=pr.base,
            head=pr.head,
            head_sha=pr.head_sha,
            state=pr.state,
            draft=pr.draft,
            url=pr.url,
            created_at=pr.created_at,
            updated_at=pr.updated_at,
            merged_sha=pr.merged_sha,
            closed_by=self._person(pr.closed_by_id),
            closed_at=pr.closed_at,
            commits=commits,
            commits_error=error,
            checks=self._checks(pr),
            can_merge=pr.state == "open" and self.may_merge(user, pr, session),
        )

    def _checks(self, pr: PullRequest) -> ChecksPublic | None:
        """The session's last verify run before the push of this head: kept on the PR when a
        push opens or updates it; read from the session's events once for older rows."""
        if pr.checks_sha != pr.head_sha:
            try:
                store = self.sessions.store(pr.session_id)
            except Unavailable:  # its file is on another API host's data dir: no checks to show
                return None
            pr.checks = verify_before(store, pr.head_sha)
            pr.checks_sha = pr.head_sha
            assert pr.id is not None
            self.pulls.keep_checks(pr.id, pr.checks, pr.head_sha)
        if pr.checks is None:
            return None
        found = VerifyRan.model_validate(pr.checks)
        return ChecksPublic(
            passed=found.passed,
            round=found.round,
            max_rounds=found.max_rounds,
            checks=[CheckPublic(**c.model_dump()) for c in found.checks],
        )

    async def diff(self, pr_id: int) -> PullDiff:
        pr = self.pulls.by_id(pr_id)
        repo = self.sessions.repos.by_id(pr.repo_id)
        try:
            text = await self.forge.diff(repo.url, pr.merge_base or pr.base, pr.head_sha)
        except ForgeError as exc:
            raise NotFound(f"the diff of pull request {pr_id} cannot be read: {exc}") from exc
        return PullDiff(base=pr.base, head_sha=pr.head_sha, files=_files(text), diff=text)

    def _claim(self, pr_id: int, user: User) -> tuple[PullRequest, Session]:
        pr = self.pulls.by_id(pr_id)
        session = self.sessions.get(pr.session_id)
        if not self.may_merge(user, pr, session):
            raise Forbidden(
                "only the session's author, the pull request's author or an admin "
                "(NIGHTSHIFT_ADMINS) may merge or close it"
            )
        if pr.state != "open":
            raise Conflict(f"pull request {pr_id} is already {pr.state}")
        if pr_id in self.pulls.merging:
            raise Conflict(f"pull request {pr_id} is being merged or closed right now")
        self.pulls.merging.add(pr_id)
        return pr, session

    async def merge(self, pr_id: int, user: User) -> PullDetail:
        pr, session = self._claim(pr_id, user)
        try:
            if pr.draft:
                raise Conflict(
                    f"pull request {pr_id} is a draft: its verify commands failed; mark it "
                    "ready for review first"
                )
            repo = self.sessions.repos.by_id(pr.repo_id)
            branch_tip = await self._branch_tip(repo.url, pr)
            message = f"Merge pull request #{pr.number} from {pr.head}\n\n{pr.title}\n"
            try:
                result = await self.forge.merge(
                    repo.url, pr.base, branch_tip, message, (user.name or user.login, user.email)
                )
            except (MergeConflict, BaseCheckedOut) as exc:
                raise Conflict(str(exc)) from exc
            except ForgeError as exc:
                raise Conflict(f"merging failed, nothing was merged: {exc}") from exc
            await self.forge.delete_branch(repo.url, pr.head, branch_tip)
            pr.state = "merged"
            pr.merge_base = result.merge_base
            pr.merged_sha = result.sha
            self._finish(pr, session, user)
            log.info("%s: pull request #%s merged by %s", repo.name, pr.number, user.login)
        finally:
            self.pulls.merging.discard(pr_id)
        return await self.detail(pr_id, user)

    async def ready(self, pr_id: int, user: User) -> PullDetail:
        """Mark a draft ready for review (it may then be merged), by those who may merge it."""
        pr, _session = self._claim(pr_id, user)
        try:
            if pr.draft:
                pr.draft = False
                self.pulls.save(pr)
                log.info("pull request %s marked ready by %s", pr_id, user.login)
        finally:
            self.pulls.merging.discard(pr_id)
        return await self.detail(pr_id, user)

    async def close(self, pr_id: int, user: User) -> PullDetail:
        pr, session = self._claim(pr_id, user)
        try:
            repo = self.sessions.repos.by_id(pr.repo_id)
            pr.merge_base = await self._merge_base(repo.url, pr)
            await self.forge.delete_branch(repo.url, pr.head, pr.head_sha)
            pr.state = "closed"
            self._finish(pr, session, user)
        finally:
            self.pulls.merging.discard(pr_id)
        return await self.detail(pr_id, user)

    async def _branch_tip(self, url: str, pr: PullRequest) -> str:
        """The head the reviewer saw; refuse when the branch moved under them."""
        try:
            tip = await self.forge.tip(url, pr.head)
        except ForgeError as exc:
            raise Conflict(f"the branch {pr.head} is gone from the repository: {exc}") from exc
        if tip != pr.head_sha:
            raise Conflict(
                f"{pr.head} is at {tip[:12]}, not the reviewed {pr.head_sha[:12]}; "
                "reload the page to review the new commits"
            )
        return tip

    async def _merge_base(self, url: str, pr: PullRequest) -> str | None:
        try:
            return await self.forge.merge_base(url, pr.base, pr.head_sha)
        except ForgeError:
            return None

    def _finish(self, pr: PullRequest, session: Session, user: User) -> None:
        pr.closed_by_id = user.id
        pr.closed_at = time.time()
        self.pulls.save(pr)
        hub = self.sessions.hub
        with hub.lock(session.id):
            current = self.sessions.get(session.id)
            if current.pr_number == pr.number and current.pr_state != pr.state:
                hub.publish(session.id, PrStateChanged(state=pr.state))


def _files(diff: str) -> list[PullFile]:
    files: list[PullFile] = []
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            path = line.split(" b/", 1)[1] if " b/" in line else line[11:]
            files.append(PullFile(path=path, added=0, removed=0))
        elif files and line.startswith("+") and not line.startswith("+++"):
            files[-1].added += 1
        elif files and line.startswith("-") and not line.startswith("---"):
            files[-1].removed += 1
    return files
