"""Repos: register, list, read, change, remove; pull requests of the local forge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from app.api.deps import CurrentUser, ImagesDep, LocalPullsDep, ReposDep, current_user
from app.schemas import (
    ROW_MAX,
    PullRequestPublic,
    RepoAdded,
    RepoCreate,
    RepoDetail,
    RepoListed,
    RepoPublic,
    RepoUpdate,
)

router = APIRouter(prefix="/api/repos", tags=["repos"], dependencies=[Depends(current_user)])


@router.post("", status_code=status.HTTP_201_CREATED)
def add_repo(body: RepoCreate, repos: ReposDep) -> RepoAdded:
    """Register a repository: `owner/name` (GitHub), or a local path inside
    NIGHTSHIFT_REPO_ROOTS (local forge; 403 elsewhere, and always inside the data dir). A
    removed repo's name registers it again, with this registration's fields. `warnings` says
    what to fix, such as a `.nightshift.toml` its base branch does not have."""
    return repos.added(repos.add_from_api(body))


@router.get("")
def list_repos(images: ImagesDep, removed: bool = False) -> list[RepoListed]:
    """The repos in use, each with its environment; `removed=true` adds the removed ones
    (with `removed_at`)."""
    return images.listed(removed)


@router.get("/{repo:path}/pulls/{number}")
def get_pull(
    repo: str,
    number: Annotated[int, Path(ge=1, le=ROW_MAX)],
    repos: ReposDep,
    local_pulls: LocalPullsDep,
) -> PullRequestPublic:
    """A pull request record of the local forge."""
    return PullRequestPublic.model_validate(local_pulls.get(repos.get(repo, removed=True), number))


@router.get("/{repo:path}/pulls")
def list_pulls(repo: str, repos: ReposDep, local_pulls: LocalPullsDep) -> list[PullRequestPublic]:
    """The repo's pull requests, a removed repo's too."""
    found = repos.get(repo, removed=True)
    return [PullRequestPublic.model_validate(p) for p in local_pulls.list(found)]


@router.get("/{repo:path}")
def get_repo(repo: str, images: ImagesDep) -> RepoDetail:
    """A repo with its effective spec: stored values completed by the `.nightshift.toml` and
    devcontainer.json of its newest build, each with where it came from. A removed repo is
    still answered (with `removed_at`)."""
    return images.repo_detail(repo)


@router.patch("/{repo:path}")
def update_repo(repo: str, body: RepoUpdate, repos: ReposDep, user: CurrentUser) -> RepoPublic:
    """Change a repo's spec: the fields named, the rest kept (its name and url never change),
    checked as a registration is. New sessions and the image build this queues take it;
    sessions already started keep theirs. A removed repo is a 404."""
    return RepoPublic.model_validate(repos.update(repo, body, who=user.login))


@router.delete("/{repo:path}")
def remove_repo(repo: str, repos: ReposDep, user: CurrentUser) -> RepoPublic:
    """Remove a repo: no new sessions or follow-ups, no image builds or warm sandboxes, no
    longer listed or offered; its sessions and pull requests stay readable. 404 for an
    unknown or already removed repo. Registering the name again brings it back."""
    return RepoPublic.model_validate(repos.remove(repo, who=user.login))
