"""Stats for the stats page and for anyone judging whether agents pay off."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import CurrentUser, RuntimeDep
from app.schemas import Stats
from app.services.pr_stats import compute_pr_stats
from app.services.stats import compute_stats

router = APIRouter(prefix="/api", tags=["stats"])


@router.get("/stats")
def get_stats(
    user: CurrentUser, runtime: RuntimeDep, days: Annotated[int, Query(ge=1, le=365)] = 30
) -> Stats:
    """Merged-PR count and share, sessions and prompts per day, humans prompting in the last
    five minutes, and start latency by mode."""
    stats = compute_stats(runtime.engine, days)
    return stats.model_copy(update={"pull_requests": compute_pr_stats(runtime.engine, days)})
