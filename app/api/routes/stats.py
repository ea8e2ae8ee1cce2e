"""Deployment-wide views: stats for the stats page and for anyone judging whether agents pay
off (merged PRs, use, latency, spend), and the models sessions may run on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api.deps import EngineDep, SessionsDep, current_user
from app.schemas import ModelList
from app.schemas_stats import Stats
from app.services.github.pr_stats import compute_pr_stats, compute_pr_stats_by_repo
from app.services.stats import compute_stats

router = APIRouter(prefix="/api", tags=["stats"], dependencies=[Depends(current_user)])


@router.get("/stats")
def get_stats(engine: EngineDep, days: Annotated[int, Query(ge=1, le=365)] = 30) -> Stats:
    """Merged-PR count and share, sessions and prompts per day, humans prompting in the last
    five minutes, start latency by mode, and tokens and estimated cost per person and per
    repository over the window, and how the PRs fared on GitHub."""
    stats = compute_stats(engine, days)
    return stats.model_copy(
        update={
            "pull_requests": compute_pr_stats(engine, days),
            "pull_requests_by_repo": compute_pr_stats_by_repo(engine, days),
        }
    )


@router.get("/models", tags=["sessions"])
def list_models(sessions: SessionsDep) -> ModelList:
    """The models a session may run on (NIGHTSHIFT_MODELS), the default marked and first;
    pass one as `model` to `POST /api/sessions`."""
    return sessions.models.public()
