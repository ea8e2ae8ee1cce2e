"""The agent's share of the code, in lines: lines added to a repo's base branch by Nightshift's
commits over all lines added to it, from `push` webhooks.

A push payload lists the pushed commits without line counts, so each one is asked for once
(`GET /repos/{o}/{r}/commits/{sha}`, through the App's installation; the client retries 5xx
with backoff) and kept as a `GitHubBaseCommit`. At most `MAX_PUSH_COMMITS` per push are
measured; the rest, and any GitHub would not describe, are kept with the reason and no count.
A merge commit counts 0: the commits it merges are counted themselves.

A commit is Nightshift's when a session made it (the SHA of its `CommitCreated`) or when it is
the merge commit of a session's PR (a squash or rebase merge gives the work new SHAs); those
are `GitHubAgentCommit`s. Which base commits are the agent's is decided when the stats are
read, so a push delivered before the PR's `closed` webhook is still counted right.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.github_tables import GitHubAgentCommit, GitHubBaseCommit
from integrations.github import GitHubApp, GitHubError
from integrations.github.commits import commit_stats

log = logging.getLogger("nightshift.github.code_share")
MAX_PUSH_COMMITS = 20
"""Commits measured per push (GitHub's push payload lists at most 20)."""
LISTED_MAX = 100
"""Listed commits looked at per push (GitHub lists at most 20; a longer list is not GitHub's)."""
SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass(frozen=True)
class LineShare:
    agent_lines: int
    lines: int
    unmeasured: int
    """Base commits of the window whose lines are not known (skipped, or GitHub failed)."""


def record_agent_commit(engine: Engine, session_id: str, sha: str, kind: str = "commit") -> None:
    """Remember that `sha` is Nightshift's work (a session's commit, or its PR's merge)."""
    sha = sha.lower()
    if not SHA.match(sha):
        return
    with DB(engine) as db:
        db.add(GitHubAgentCommit(session_id=session_id, sha=sha, kind=kind))
        try:
            db.commit()
        except IntegrityError:
            db.rollback()  # recorded before (a redelivery, or the same event replayed)


class CodeShare:
    def __init__(self, engine: Engine, app: GitHubApp, max_commits: int = MAX_PUSH_COMMITS):
        self.engine = engine
        self.app = app
        self.max_commits = max_commits

    def on_push(self, repo: str, payload: dict[str, Any]) -> None:
        """A push to `repo`'s base branch: measure the commits it added."""
        listed = payload.get("commits")
        shas: list[str] = []
        for commit in listed[:LISTED_MAX] if isinstance(listed, list) else []:
            sha = str(commit.get("id") or "").lower() if isinstance(commit, dict) else ""
            if SHA.match(sha) and sha not in shas:
                shas.append(sha)
        key = repo.lower()
        with DB(self.engine) as db:
            known = set(
                db.exec(
                    select(GitHubBaseCommit.sha).where(
                        GitHubBaseCommit.repo == key, col(GitHubBaseCommit.sha).in_(shas)
                    )
                ).all()
            )
        fresh = [sha for sha in shas if sha not in known]
        for i, sha in enumerate(fresh):
            if i >= self.max_commits:
                self._keep(key, sha, None, f"past the {self.max_commits} commits measured per push")
                continue
            try:
                stats = commit_stats(self.app.as_installation(repo), repo, sha)
            except GitHubError as exc:
                log.warning("counting the lines of %s on %s failed: %s", sha[:12], repo, exc)
                self._keep(key, sha, None, str(exc)[:300])
                continue
            if stats.parents > 1:
                self._keep(key, sha, 0, "a merge commit: the commits it merges are counted")
            else:
                self._keep(key, sha, stats.additions, None)

    def _keep(self, repo: str, sha: str, additions: int | None, reason: str | None) -> None:
        with DB(self.engine) as db:
            db.add(
                GitHubBaseCommit(
                    repo=repo, sha=sha, additions=additions, reason=reason, pushed_at=time.time()
                )
            )
            try:
                db.commit()
            except IntegrityError:
                db.rollback()  # a concurrent delivery of the same push measured it


def line_share(engine: Engine, since: float, repo: str | None = None) -> LineShare:
    """Lines added to base branches since `since` (of one repo: its full name, lower case),
    and how many of them were Nightshift's."""
    added = func.coalesce(func.sum(GitHubBaseCommit.additions), 0)
    window = col(GitHubBaseCommit.pushed_at) >= since
    if repo is not None:
        window = window & (col(GitHubBaseCommit.repo) == repo)
    ours = col(GitHubBaseCommit.sha).in_(select(GitHubAgentCommit.sha))
    with DB(engine) as db:
        lines = db.exec(select(added).where(window)).one()
        agent_lines = db.exec(select(added).where(window, ours)).one()
        unmeasured = db.exec(
            select(func.count())
            .select_from(GitHubBaseCommit)
            .where(window, col(GitHubBaseCommit.additions).is_(None))
        ).one()
    return LineShare(
        agent_lines=int(agent_lines or 0), lines=int(lines or 0), unmeasured=int(unmeasured)
    )
