"""Control-DB tables of GitHub as a client: what each mention, review or failing check asked
for (`GitHubTrigger`), and the CI-fix attempts made on each session's pull request."""

from __future__ import annotations

import time

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from images.sql import table_of


class GitHubTrigger(SQLModel, table=True):
    """One mention or review that asked Nightshift for work, by the GitHub object it came from
    (`key`, unique: a redelivery or an edit of the same comment never asks twice)."""

    __tablename__ = "github_triggers"
    __table_args__ = (
        Index("ix_github_triggers_user_state", "github_user_id", "state"),
        Index("ix_github_triggers_session", "session_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=100, unique=True)
    """`issue:<id>`, `comment:<id>`, `review_comment:<id>` or `review:<id>`."""
    kind: str = Field(max_length=20)
    """`issue` (starts a session) or `follow_up` (queued in the PR's session)."""
    repo: str = Field(max_length=200)
    number: int
    """The issue's or the pull request's number."""
    github_user_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    login: str = Field(max_length=100)
    prompt: str = Field(default="", sa_type=Text)
    url: str = Field(default="", max_length=500)
    state: str = Field(default="pending", max_length=16)
    """`pending` (waits for the person to link GitHub), `started`, `queued`, `refused`,
    `failed`."""
    session_id: str | None = Field(default=None, max_length=32)
    reason: str | None = Field(default=None, max_length=500)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class GitHubCiAttempt(SQLModel, table=True):
    """A failing check on a session's PR head that was sent back to the session as work."""

    __tablename__ = "github_ci_attempts"
    __table_args__ = (UniqueConstraint("session_id", "head_sha", name="uq_github_ci_head"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(max_length=32, index=True)
    pr_number: int
    head_sha: str = Field(max_length=64)
    check_name: str = Field(max_length=200)
    outcome: str = Field(default="queued", max_length=16)
    """`queued` (a follow-up asks for a fix), `passed` (checks on a later head passed),
    `capped` (NIGHTSHIFT_CI_FIX_ATTEMPTS reached: nothing queued)."""
    created_at: float = Field(default_factory=time.time)


class GitHubPrStats(SQLModel, table=True):
    """What happened to one session's pull request, for the PR stats: pushes and commits the
    agent made (from the session's events), reviews and merge (from GitHub's webhooks)."""

    __tablename__ = "github_pr_stats"

    session_id: str = Field(primary_key=True, max_length=32)
    pushes: int = 0
    agent_commits: int = 0
    pr_commits: int | None = None
    """Commits on the PR when it closed, as GitHub counts them (the agent's and people's)."""
    opened_at: float | None = None
    merged_at: float | None = None
    reviews: int = 0
    approvals: int = 0
    changes_requested: int = 0
    follow_ups: int = 0
    """Prompts queued on the session after its PR opened (revisions asked for)."""
    updated_at: float = Field(default_factory=time.time)


class GitHubAgentCommit(SQLModel, table=True):
    """A commit that is Nightshift's: one a session made (`CommitCreated`), or the merge
    commit of a session's PR (`merge`: a squash or rebase merge gives the work new SHAs)."""

    __tablename__ = "github_agent_commits"
    __table_args__ = (UniqueConstraint("session_id", "sha", name="uq_github_agent_commit"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(max_length=32)
    sha: str = Field(max_length=64, index=True)
    kind: str = Field(default="commit", max_length=16)
    created_at: float = Field(default_factory=time.time)


class GitHubBaseCommit(SQLModel, table=True):
    """A commit pushed to a known repo's base branch, with the lines it added (from
    `GET /repos/{o}/{r}/commits/{sha}`; None, with the reason, when it was not measured)."""

    __tablename__ = "github_base_commits"
    __table_args__ = (UniqueConstraint("repo", "sha", name="uq_github_base_commit"),)

    id: int | None = Field(default=None, primary_key=True)
    repo: str = Field(max_length=200)
    """The repository's full name, lower case."""
    sha: str = Field(max_length=64, index=True)
    additions: int | None = None
    reason: str | None = Field(default=None, max_length=300)
    pushed_at: float = Field(default_factory=time.time, index=True)


GITHUB_TRIGGER_TABLES = [
    table_of(GitHubTrigger),
    table_of(GitHubCiAttempt),
    table_of(GitHubPrStats),
    table_of(GitHubAgentCommit),
    table_of(GitHubBaseCommit),
]
