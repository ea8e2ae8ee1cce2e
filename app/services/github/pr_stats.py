"""Pull-request stats: do the agents' PRs get approved, how often are they revised, how long do
they wait to be merged, and how much of what is merged did the agent write?

Facts are recorded as they happen, one `GitHubPrStats` row per session: pushes, commits and
follow-ups queued after the PR opened from the session's own events (a hub handler), reviews
and the merge from GitHub's webhooks. The agent's share of the code is counted two ways: in
commits (the commits the agent made over all commits on the merged PRs; people may push to a
session's branch too) and in lines added to the base branches (`app/services/github/code_share.py`).
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.github_tables import GitHubPrStats
from app.models import Repo, Session
from app.schemas_stats import PrStats, RepoPrStats
from app.services.github.code_share import LineShare, line_share, record_agent_commit
from workers.events import BranchPushed, CommitCreated, Event, PromptQueued, PrOpened


def _ts(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class PrStatsRecorder:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _change(self, session_id: str, **add: int) -> None:
        """Add to the session's counters (the row is made on first use)."""
        for _ in range(2):  # a concurrent first insert: the second try finds its row
            with DB(self.engine) as db:
                row = db.get(GitHubPrStats, session_id) or GitHubPrStats(session_id=session_id)
                for name, value in add.items():
                    setattr(row, name, getattr(row, name) + value)
                row.updated_at = time.time()
                db.add(row)
                try:
                    db.commit()
                    return
                except IntegrityError:
                    db.rollback()

    def on_event(self, session_id: str, event: Event) -> None:
        """A hub handler: the agent's commits and pushes, the PR opening, later follow-ups."""
        if isinstance(event, CommitCreated):
            self._change(session_id, agent_commits=1)
            record_agent_commit(self.engine, session_id, event.sha)
        elif isinstance(event, BranchPushed):
            self._change(session_id, pushes=1)
        elif isinstance(event, PrOpened):
            self._change(session_id)
            with DB(self.engine) as db:
                row = db.get(GitHubPrStats, session_id)
                assert row is not None
                row.opened_at = row.opened_at or time.time()
                db.add(row)
                db.commit()
        elif isinstance(event, PromptQueued):
            with DB(self.engine) as db:
                row = db.get(GitHubPrStats, session_id)
            if row is not None and row.opened_at is not None:
                self._change(session_id, follow_ups=1)

    def on_pull(self, session_ids: list[str], pr: dict[str, Any]) -> None:
        """A `pull_request` delivery for these sessions' PR: when it opened, merged, its commits."""
        opened, merged = _ts(pr.get("created_at")), _ts(pr.get("merged_at"))
        commits = pr.get("commits")
        merge_sha = pr.get("merge_commit_sha")
        for session_id in session_ids:
            if pr.get("merged") is True and isinstance(merge_sha, str):
                record_agent_commit(self.engine, session_id, merge_sha, "merge")
            self._change(session_id)
            with DB(self.engine) as db:
                row = db.get(GitHubPrStats, session_id)
                assert row is not None
                row.opened_at = row.opened_at or opened
                row.merged_at = merged or row.merged_at
                if isinstance(commits, int) and not isinstance(commits, bool) and commits >= 0:
                    row.pr_commits = commits
                db.add(row)
                db.commit()

    def on_review(self, payload: dict[str, Any]) -> None:
        """A submitted review on a session's PR (any state) counts; others are not ours."""
        review, pull = payload.get("review"), payload.get("pull_request")
        repo = (payload.get("repository") or {}).get("full_name")
        if payload.get("action") != "submitted" or not isinstance(review, dict):
            return
        number = pull.get("number") if isinstance(pull, dict) else None
        if not isinstance(repo, str) or not isinstance(number, int):
            return
        with DB(self.engine) as db:
            session_id = db.exec(
                select(Session.id)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .where(
                    Repo.forge == "github",
                    func.lower(Repo.url) == repo.lower(),
                    Session.pr_number == number,
                )
            ).first()
        if session_id is None:
            return
        state = str(review.get("state") or "").lower()
        self._change(
            session_id,
            reviews=1,
            approvals=int(state == "approved"),
            changes_requested=int(state == "changes_requested"),
        )


def compute_pr_stats(engine: Engine, window_days: int = 30, now: float | None = None) -> PrStats:
    """The PR stats of sessions created in the window that opened a PR, over every repo."""
    since = (now or time.time()) - window_days * 86400
    rows = [stats for stats, _repo, _url in _rows(engine, since)]
    return _stats_of(rows, line_share(engine, since))


def compute_pr_stats_by_repo(
    engine: Engine, window_days: int = 30, now: float | None = None
) -> list[RepoPrStats]:
    """The same, per repository (those with a PR in the window), most PRs first."""
    since = (now or time.time()) - window_days * 86400
    groups: dict[str, tuple[str, list[GitHubPrStats]]] = {}
    for stats, repo, url in _rows(engine, since):
        groups.setdefault(repo, (url, []))[1].append(stats)
    out = [
        RepoPrStats(
            name=repo,
            **_stats_of(rows, line_share(engine, since, repo=url.lower())).model_dump(),
        )
        for repo, (url, rows) in groups.items()
    ]
    return sorted(out, key=lambda r: (-r.prs, r.name))


def _rows(engine: Engine, since: float) -> list[tuple[GitHubPrStats, str, str]]:
    with DB(engine) as db:
        return [
            (stats, repo, url)
            for stats, repo, url in db.exec(
                select(GitHubPrStats, Session.repo_name, Repo.url)
                .join(Session, col(Session.id) == GitHubPrStats.session_id)
                .join(Repo, col(Repo.id) == Session.repo_id)
                .where(col(Session.created_at) >= since, col(Session.pr_number).is_not(None))
            ).all()
        ]


def _stats_of(rows: list[GitHubPrStats], lines: LineShare) -> PrStats:
    reviewed = [r for r in rows if r.reviews]
    approved = [r for r in reviewed if r.approvals]
    # Times come from several sources (GitHub's second-resolution stamps, our own clock): a
    # merge stamped a fraction of a second "before" its opening counts as no wait, not none.
    waits = [
        max(0.0, r.merged_at - r.opened_at)
        for r in rows
        if r.merged_at is not None and r.opened_at is not None
    ]
    merged = [r for r in rows if r.merged_at is not None and r.pr_commits]
    all_commits = sum(r.pr_commits or 0 for r in merged)
    agent_commits = sum(min(r.agent_commits, r.pr_commits or 0) for r in merged)
    return PrStats(
        prs=len(rows),
        reviewed=len(reviewed),
        approval_rate=round(len(approved) / len(reviewed), 4) if reviewed else None,
        revisions_per_pr=round(sum(r.pushes for r in rows) / len(rows), 2) if rows else None,
        median_open_to_merge_s=round(statistics.median(waits), 1) if waits else None,
        follow_ups_per_pr=round(sum(r.follow_ups for r in rows) / len(rows), 2) if rows else None,
        agent_commit_share=round(agent_commits / all_commits, 4) if all_commits else None,
        agent_line_share=round(lines.agent_lines / lines.lines, 4) if lines.lines else None,
        base_lines_added=lines.lines,
        agent_lines_added=lines.agent_lines,
        unmeasured_commits=lines.unmeasured,
    )
