"""Commits, as the App: how many lines one commit added (a push payload carries no line
counts, so each pushed commit is asked for once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from githubkit import GitHub

from integrations.github.app import split_repo
from integrations.github.client import call
from integrations.github.errors import GitHubError


@dataclass(frozen=True)
class CommitStats:
    sha: str
    additions: int
    parents: int
    """How many parents the commit has (2 or more: a merge commit)."""


def commit_stats(gh: GitHub[Any], repo: str, sha: str) -> CommitStats:
    """The lines `sha` added on `repo` (`GET /repos/{o}/{r}/commits/{sha}` → `stats`)."""
    owner, name = split_repo(repo)
    data = call(
        f"reading commit {sha[:12]} of {repo}",
        lambda: gh.rest.repos.get_commit(owner, name, sha, per_page=1),
    )
    stats = (data or {}).get("stats") if isinstance(data, dict) else None
    additions = stats.get("additions") if isinstance(stats, dict) else None
    if not isinstance(additions, int) or isinstance(additions, bool) or additions < 0:
        raise GitHubError(f"commit {sha[:12]} of {repo} has no line counts")
    parents = data.get("parents")
    return CommitStats(sha, additions, len(parents) if isinstance(parents, list) else 1)
