"""Pull requests: open one (or find the one already open for a branch), read its state, comment.

Each function takes a client acting as somebody: the person's own token when opening their PR,
the App's installation when reading states or as the configured fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from githubkit import GitHub

from integrations.github.app import split_repo
from integrations.github.client import call
from integrations.github.errors import GitHubValidationFailed

PrState = Literal["open", "closed", "merged"]


@dataclass(frozen=True)
class PullRequestInfo:
    number: int
    url: str
    state: PrState
    head: str
    head_sha: str
    base: str
    author: str


def state_of(data: dict[str, Any]) -> PrState:
    if data.get("merged") or data.get("merged_at"):
        return "merged"
    return "closed" if data.get("state") == "closed" else "open"


def _info(data: dict[str, Any]) -> PullRequestInfo:
    head = data.get("head") or {}
    base = data.get("base") or {}
    return PullRequestInfo(
        number=int(data["number"]),
        url=str(data["html_url"]),
        state=state_of(data),
        head=str(head.get("ref", "")),
        head_sha=str(head.get("sha", "")),
        base=str(base.get("ref", "")),
        author=str((data.get("user") or {}).get("login", "")),
    )


def _already_open(exc: GitHubValidationFailed) -> bool:
    texts = [str(exc), *(str(e.get("message", "")) for e in exc.errors if isinstance(e, dict))]
    return any("already exists" in text for text in texts)


def create_pull_request(
    gh: GitHub[Any],
    repo: str,
    *,
    head: str,
    base: str,
    title: str,
    body: str,
    draft: bool = False,
) -> tuple[PullRequestInfo, bool]:
    """Open a PR from `head` into `base`; (the PR, True) or (the open one for `head`, False).
    `draft` opens it as a draft (its checks still fail)."""
    owner, name = split_repo(repo)
    try:
        data = call(
            f"opening a pull request on {repo} from {head}",
            lambda: gh.rest.pulls.create(
                owner,
                name,
                title=title[:256] or head,
                head=head,
                base=base,
                body=body,
                draft=draft,
            ),
        )
    except GitHubValidationFailed as exc:
        if not _already_open(exc):
            raise
        existing = find_pull_request(gh, repo, head)
        if existing is None:
            raise
        return existing, False
    return _info(data), True


def find_pull_request(gh: GitHub[Any], repo: str, head: str) -> PullRequestInfo | None:
    """The open PR whose head is branch `head` of `repo` itself, if any."""
    owner, name = split_repo(repo)
    found = call(
        f"looking for the pull request of {head} on {repo}",
        lambda: gh.rest.pulls.list(owner, name, head=f"{owner}:{head}", state="open"),
    )
    for data in found or []:
        if (data.get("head") or {}).get("ref") == head:
            return _info(data)
    return None


def get_pull_request(gh: GitHub[Any], repo: str, number: int) -> PullRequestInfo:
    owner, name = split_repo(repo)
    data = call(
        f"reading pull request #{number} of {repo}",
        lambda: gh.rest.pulls.get(owner, name, number),
    )
    return _info(data)


def comment(gh: GitHub[Any], repo: str, number: int, body: str) -> str:
    """Comment on a PR's conversation; returns the comment's URL."""
    owner, name = split_repo(repo)
    data = call(
        f"commenting on pull request #{number} of {repo}",
        lambda: gh.rest.issues.create_comment(owner, name, number, body=body),
    )
    return str(data.get("html_url", ""))
