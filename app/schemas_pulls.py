"""What the local pull-request review page reads: a PR with its commits, checks and diff."""

from __future__ import annotations

from pydantic import BaseModel


class PersonPublic(BaseModel):
    login: str
    name: str


class CommitPublic(BaseModel):
    sha: str
    author_name: str
    author_email: str
    timestamp: int
    message: str


class CheckPublic(BaseModel):
    command: str
    ok: bool
    exit_code: int
    output: str


class ChecksPublic(BaseModel):
    """The session's last run of the repository's verify commands before this head."""

    passed: bool
    round: int
    max_rounds: int
    checks: list[CheckPublic]


class PullDetail(BaseModel):
    id: int
    number: int
    repo: str
    session_id: str
    title: str
    body: str
    author: PersonPublic
    base: str
    head: str
    head_sha: str
    state: str
    draft: bool
    """Opened while its verify commands failed: merging is refused until it is marked ready
    (`POST /api/pulls/{id}/ready`) or a later push passes them."""
    url: str
    created_at: float
    updated_at: float
    merged_sha: str | None
    closed_by: PersonPublic | None
    closed_at: float | None
    commits: list[CommitPublic]
    commits_error: str | None = None
    """Why the commits could not be read (a closed PR whose commits git has pruned)."""
    checks: ChecksPublic | None
    can_merge: bool
    """Whether the caller may merge or close it: the session's author, the PR's author, or an
    admin (NIGHTSHIFT_ADMINS)."""


class PullFile(BaseModel):
    path: str
    added: int
    removed: int


class PullDiff(BaseModel):
    base: str
    head_sha: str
    files: list[PullFile]
    diff: str
