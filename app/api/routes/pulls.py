"""Local pull requests: the review page's API (read, diff, merge, close).

Pull requests of the local forge are numbered per repository but addressed here by their
global id, the one in their link (`/pulls/{id}`), so a link never needs the repo's name.
Merging and closing are writes: they take the same authentication and Origin check as every
other POST (`CurrentUser`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import (
    CurrentUser,
    ForgesDep,
    LocalPullsDep,
    SessionsDep,
    SettingsDep,
    current_user,
)
from app.errors import NotFound
from app.schemas import ROW_MAX
from app.schemas_pulls import PullDetail, PullDiff
from app.services.local_pull_review import LocalPullReview
from integrations.forge.local import LocalForge

router = APIRouter(prefix="/api/pulls", tags=["pulls"], dependencies=[Depends(current_user)])


async def get_review(
    forges: ForgesDep, local_pulls: LocalPullsDep, sessions: SessionsDep, settings: SettingsDep
) -> LocalPullReview:
    forge = forges.get("local")
    if not isinstance(forge, LocalForge):
        raise NotFound("the local forge is not configured on this server")
    return LocalPullReview(local_pulls, sessions, forge, settings.admin_logins())


ReviewDep = Annotated[LocalPullReview, Depends(get_review)]
PullId = Annotated[int, Path(ge=1, le=ROW_MAX, description="The id in the PR's link")]


@router.get("/{pr_id}")
async def get_pull(pr_id: PullId, user: CurrentUser, review: ReviewDep) -> PullDetail:
    """A local pull request with its commits, the session's verify checks, and whether the
    caller may merge it (`can_merge`)."""
    return await review.detail(pr_id, user)


@router.get("/{pr_id}/diff")
async def get_pull_diff(pr_id: PullId, review: ReviewDep) -> PullDiff:
    """The files changed and the unified diff of the head against where it left its base."""
    return await review.diff(pr_id)


@router.post("/{pr_id}/merge")
async def merge_pull(pr_id: PullId, user: CurrentUser, review: ReviewDep) -> PullDetail:
    """Merge into the base branch: a fast-forward when possible, else a merge commit by the
    caller. 409 (nothing changed) on a conflict, a moved branch, or a base branch checked out
    with uncommitted changes; 403 unless the caller is the session's or PR's author or an
    admin. The branch is deleted afterwards."""
    return await review.merge(pr_id, user)


@router.post("/{pr_id}/ready")
async def ready_pull(pr_id: PullId, user: CurrentUser, review: ReviewDep) -> PullDetail:
    """Mark a draft (opened while its verify commands failed) ready for review, so it may be
    merged. Same permissions as merging; a PR that is not a draft is returned unchanged."""
    return await review.ready(pr_id, user)


@router.post("/{pr_id}/close")
async def close_pull(pr_id: PullId, user: CurrentUser, review: ReviewDep) -> PullDetail:
    """Close without merging; the branch is deleted. Same permissions as merging."""
    return await review.close(pr_id, user)
