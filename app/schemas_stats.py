"""The shapes of `GET /api/stats`: merged PRs, use per day, start latency, spend per person
and repository, and how the pull requests fared on GitHub."""

from __future__ import annotations

from pydantic import BaseModel

from app.schemas import Usage


class LatencyStats(BaseModel):
    count: int
    p50_ms: int | None
    p95_ms: int | None


class DayStats(BaseModel):
    date: str
    sessions: int
    prompts: int


class UsageGroup(Usage):
    """The usage of one person's or one repository's prompts over the stats window."""

    name: str
    prompts: int


class PrStats(BaseModel):
    """How the sessions' pull requests fare on GitHub (None where nothing was measured yet)."""

    prs: int
    reviewed: int
    approval_rate: float | None
    """Reviewed PRs with at least one approving review, over reviewed PRs."""
    revisions_per_pr: float | None
    """Pushes to a PR's branch (the first included), on average."""
    follow_ups_per_pr: float | None = None
    """Prompts queued on a session after its PR opened, on average."""
    median_open_to_merge_s: float | None
    agent_commit_share: float | None
    """Commits the agent made over all commits of the merged PRs."""
    agent_line_share: float | None = None
    """Lines added to base branches by Nightshift's commits over all lines added to them."""
    base_lines_added: int = 0
    agent_lines_added: int = 0
    unmeasured_commits: int = 0
    """Base-branch commits whose lines are not counted (past the per-push cap, or GitHub failed)."""


class RepoPrStats(PrStats):
    """`PrStats` of one repository."""

    name: str


class Stats(BaseModel):
    window_days: int
    sessions: int
    merged: int
    """Sessions whose PR was merged: the primary measure of whether agents pay off."""
    merged_share: float
    per_day: list[DayStats]
    active_humans_5m: int
    active_humans: list[str]
    start_latency: dict[str, LatencyStats]
    """Prompt received to sandbox ready, by how the sandbox started (warm, image, snapshot, cold)."""
    first_model_request: LatencyStats
    usage: Usage
    """Every prompt of the window."""
    usage_by_person: list[UsageGroup]
    """By the prompt's author (login), biggest spender first."""
    usage_by_repo: list[UsageGroup]
    pull_requests: PrStats | None = None
    pull_requests_by_repo: list[RepoPrStats] = []
    """The same per repository with a PR in the window, most PRs first."""
    """GitHub PR outcomes (approval, revisions, time to merge, the agent's share)."""
