"""Issues and their conversations, as the App: reactions, comments, the thread of an issue,
review comments, edits of a PR's body, and who may write to a repository.

Every function takes a client acting as the App's installation on the repository (see
`GitHubApp.as_installation`); the answers are the parts of GitHub's JSON Nightshift reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from githubkit import GitHub

from integrations.github.app import split_repo
from integrations.github.client import call

Reaction = Literal["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"]
Permission = Literal["admin", "maintain", "write", "triage", "read", "none"]
ROLES: tuple[Permission, ...] = ("admin", "maintain", "write", "triage", "read")
"""The roles GitHub names (`role_name`), custom roles aside, strongest first."""
WRITERS: frozenset[str] = frozenset({"admin", "maintain", "write"})
MAX_THREAD_COMMENTS = 100


@dataclass(frozen=True)
class IssueComment:
    id: int
    author: str
    body: str
    created_at: str


@dataclass(frozen=True)
class ReviewComment:
    id: int
    author: str
    body: str
    path: str
    line: int | None
    diff_hunk: str
    url: str


def react(
    gh: GitHub[Any],
    repo: str,
    target: Literal["issue", "comment", "review_comment"],
    target_id: int,
    content: Reaction = "eyes",
) -> None:
    """Add a reaction (👀 by default) to an issue, an issue comment, or a review comment."""
    owner, name = split_repo(repo)
    what = f"reacting to {target} {target_id} of {repo}"
    if target == "issue":
        call(
            what,
            lambda: gh.rest.reactions.create_for_issue(owner, name, target_id, content=content),
        )
    elif target == "comment":
        call(
            what,
            lambda: gh.rest.reactions.create_for_issue_comment(
                owner,
                name,
                target_id,
                content=content,
            ),
        )
    else:
        call(
            what,
            lambda: gh.rest.reactions.create_for_pull_request_review_comment(
                owner,
                name,
                target_id,
                content=content,
            ),
        )


def reply(gh: GitHub[Any], repo: str, number: int, body: str) -> str:
    """Comment on an issue or a PR's conversation; returns the comment's URL."""
    owner, name = split_repo(repo)
    data = call(
        f"commenting on #{number} of {repo}",
        lambda: gh.rest.issues.create_comment(owner, name, number, body=body),
    )
    return str((data or {}).get("html_url", ""))


def thread(gh: GitHub[Any], repo: str, number: int) -> list[IssueComment]:
    """The first comments of an issue's (or a PR's) conversation, oldest first."""
    owner, name = split_repo(repo)
    data = call(
        f"reading the comments of #{number} of {repo}",
        lambda: gh.rest.issues.list_comments(owner, name, number, per_page=MAX_THREAD_COMMENTS),
    )
    return [
        IssueComment(
            id=int(item["id"]),
            author=str((item.get("user") or {}).get("login", "")),
            body=str(item.get("body") or ""),
            created_at=str(item.get("created_at") or ""),
        )
        for item in data or []
    ]


def review_comments(gh: GitHub[Any], repo: str, number: int, review_id: int) -> list[ReviewComment]:
    """The line comments of one pull request review."""
    owner, name = split_repo(repo)
    data = call(
        f"reading the comments of review {review_id} on #{number} of {repo}",
        lambda: gh.rest.pulls.list_comments_for_review(
            owner, name, number, review_id, per_page=100
        ),
    )
    return [review_comment_of(item) for item in data or []]


def review_comment_of(item: dict[str, Any]) -> ReviewComment:
    """A review comment from its JSON (an API answer or a webhook's `comment`)."""
    line = item.get("line") or item.get("original_line")
    return ReviewComment(
        id=int(item["id"]),
        author=str((item.get("user") or {}).get("login", "")),
        body=str(item.get("body") or ""),
        path=str(item.get("path") or ""),
        line=int(line) if isinstance(line, int) else None,
        diff_hunk=str(item.get("diff_hunk") or ""),
        url=str(item.get("html_url") or ""),
    )


def permission(gh: GitHub[Any], repo: str, login: str) -> Permission:
    """The person's permission on `repo` (`none` for a stranger)."""
    owner, name = split_repo(repo)
    data = call(
        f"reading the permission of {login} on {repo}",
        lambda: gh.rest.repos.get_collaborator_permission_level(owner, name, login),
    )
    role = str((data or {}).get("role_name") or "")
    level = str((data or {}).get("permission") or "none")
    for known in ROLES:
        if role == known:
            return known
    for known in ("admin", "write", "read"):
        if level == known:
            return known
    return "none"


def pull_body(gh: GitHub[Any], repo: str, number: int) -> str:
    owner, name = split_repo(repo)
    data = call(
        f"reading pull request #{number} of {repo}",
        lambda: gh.rest.pulls.get(owner, name, number),
    )
    return str((data or {}).get("body") or "")


def set_pull_body(gh: GitHub[Any], repo: str, number: int, body: str) -> None:
    owner, name = split_repo(repo)
    call(
        f"editing the body of pull request #{number} of {repo}",
        lambda: gh.rest.pulls.update(owner, name, number, body=body),
    )
