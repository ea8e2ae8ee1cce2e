"""Repos: register, list, read; pull requests of the local forge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import CurrentUser, ReposDep, RuntimeDep
from app.schemas import ROW_MAX, PullRequestPublic, RepoCreate, RepoDetail, RepoPublic

router = APIRouter(prefix="/api/repos", tags=["repos"])


@router.post("", status_code=status.HTTP_201_CREATED)
def add_repo(body: RepoCreate, user: CurrentUser, repos: ReposDep) -> RepoPublic:
    """Register a repository: `owner/name` (GitHub), or a local path inside
    NIGHTSHIFT_REPO_ROOTS (local forge; 403 elsewhere, and always inside the data dir)."""
    return RepoPublic.model_validate(repos.add_from_api(body))


@router.get("")
def list_repos(user: CurrentUser, repos: ReposDep) -> list[RepoPublic]:
    return [RepoPublic.model_validate(r) for r in repos.list()]


@router.get("/{repo:path}/pulls/{number}")
def get_pull(
    repo: str,
    number: Annotated[int, Path(ge=1, le=ROW_MAX)],
    user: CurrentUser,
    runtime: RuntimeDep,
) -> PullRequestPublic:
    """A pull request record of the local forge."""
    return PullRequestPublic.model_validate(
        runtime.local_pulls.get(runtime.repos.get(repo), number)
    )


@router.get("/{repo:path}/pulls")
def list_pulls(repo: str, user: CurrentUser, runtime: RuntimeDep) -> list[PullRequestPublic]:
    return [
        PullRequestPublic.model_validate(p)
        for p in runtime.local_pulls.list(runtime.repos.get(repo))
    ]


@router.get("/{repo:path}")
def get_repo(repo: str, user: CurrentUser, runtime: RuntimeDep) -> RepoDetail:
    """A repo with its effective spec: stored values completed by the `.nightshift.toml` and
    devcontainer.json of its newest build, each with where it came from."""
    return runtime.images.repo_detail(repo)
