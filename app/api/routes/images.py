"""Images and warm-up: build attempts with their logs, builds on demand, and the predictive
warm-up the web prompt box calls while a person types."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from app.api.deps import CurrentUser, ImagesDep, current_user
from app.schemas_images import ImageBuildQueued, ImageBuildRequest, ImagePublic, WarmPublic

router = APIRouter(tags=["images"], dependencies=[Depends(current_user)])


@router.get("/api/images")
def list_images(
    images: ImagesDep,
    repo: Annotated[str | None, Query(description="Only this repo's images")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ImagePublic]:
    """Image build attempts, newest first; failed ones carry their build log."""
    return images.images(repo, limit)


@router.post("/api/images/build", status_code=status.HTTP_202_ACCEPTED)
def build_images(body: ImageBuildRequest, images: ImagesDep) -> ImageBuildQueued:
    """Build now (in the background) rather than at the next scheduled run."""
    return ImageBuildQueued(queued=images.queue_build(body.repos, force=body.force))


@router.get("/api/images/{image_id}")
def get_image(image_id: str, images: ImagesDep) -> ImagePublic:
    """One build attempt with its whole log."""
    return images.get(image_id)


@router.post("/api/repos/{repo:path}/warm", status_code=status.HTTP_202_ACCEPTED)
def warm_repo(repo: str, user: CurrentUser, images: ImagesDep) -> WarmPublic:
    """Make sure a sandbox of `repo` is warm for the caller; their next session claims it.

    Returns at once; calling it again (e.g. on every keystroke) only keeps the sandbox
    reserved longer.
    """
    return images.warm(user, repo)


@router.get("/api/repos/{repo:path}/warm")
def warm_state(repo: str, user: CurrentUser, images: ImagesDep) -> WarmPublic:
    """The caller's warm sandbox on `repo`: `warming`, `warm`, `failed`, or `cold` (none)."""
    return images.warm_state(user, repo)
