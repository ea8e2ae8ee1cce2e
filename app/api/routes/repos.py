"""Repos: register, list, read; pull requests of the local forge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from app.api.deps import CurrentUser, ImagesDep, LocalPullsDep, ReposDep, current_user
from app.schemas import (
    ROW_MAX,
    PullRequestPublic,
    RepoCreate,
    RepoDetail,
    RepoPublic,
    RepoUpdate,
)

router = APIRouter(prefix="/api/repos", tags=["repos"], dependencies=[Depends(current_user)])


@router.post("", status_code=status.HTTP_201_CREATED)
def add_repo(body: RepoCreate, repos: ReposDep) -> RepoPublic:
    """Register a repository: `owner/name` (GitHub), or a local path inside
    NIGHTSHIFT_REPO_ROOTS (local forge; 403 elsewhere, and always inside the data dir)."""
    return RepoPublic.model_validate(repos.add_from_api(body))


@router.get("")
def list_repos(repos: ReposDep) -> list[RepoPublic]:
    return [RepoPublic.model_validate(r) for r in repos.list()]


@router.get("/{repo:path}/pulls/{number}")
def get_pull(
    repo: str,
    number: Annotated[int, Path(ge=1, le=ROW_MAX)],
    repos: ReposDep,
    local_pulls: LocalPullsDep,
) -> PullRequestPublic:
    """A pull request record of the local forge."""
    return PullRequestPublic.model_validate(local_pulls.get(repos.get(repo), number))


@router.get("/{repo:path}/pulls")
def list_pulls(repo: str, repos: ReposDep, local_pulls: LocalPullsDep) -> list[PullRequestPublic]:
    return [PullRequestPublic.model_validate(p) for p in local_pulls.list(repos.get(repo))]


@router.get("/{repo:path}")
def get_repo(repo: str, images: ImagesDep) -> RepoDetail:
    """A repo with its effective spec: stored values completed by the `.nightshift.toml` and
    devcontainer.json of its newest build, each with where it came from."""
    return images.repo_detail(repo)


@router.patch("/{repo:path}")
def update_repo(repo: str, body: RepoUpdate, repos: ReposDep, user: CurrentUser) -> RepoPublic:
    """Change a repo's spec: the fields named, the rest kept (its name and url never change),
    checked as a registration is. New sessions and the image build this queues take it;
    sessions already started keep theirs."""
    return RepoPublic.model_validate(repos.update(repo, body, who=user.login))
