"""Stats: does the platform pay off? Merged PRs first, then use and start-up latency."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import PromptIndex, Session, User
from app.schemas import Usage
from app.schemas_stats import DayStats, LatencyStats, Stats, UsageGroup


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _latency(values: list[int]) -> LatencyStats:
    return LatencyStats(
        count=len(values), p50_ms=_percentile(values, 0.5), p95_ms=_percentile(values, 0.95)
    )


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _usage(engine: Engine, since: float) -> tuple[Usage, list[UsageGroup], list[UsageGroup]]:
    """Tokens and estimated cost of the window's prompts: in all, per author, per repository."""
    columns: tuple[Any, ...] = (
        func.count(),
        func.coalesce(func.sum(PromptIndex.input_tokens), 0),
        func.coalesce(func.sum(PromptIndex.output_tokens), 0),
        func.coalesce(func.sum(PromptIndex.cached_tokens), 0),
        func.coalesce(func.sum(PromptIndex.cost_usd), 0.0),
    )
    in_window = col(PromptIndex.created_at) >= since
    with DB(engine) as db:
        total = db.execute(sa_select(*columns).where(in_window)).one()
        people = db.execute(
            sa_select(*(cast(Any, User.login), *columns))
            .join(User, col(User.id) == PromptIndex.user_id)
            .where(in_window)
            .group_by(User.login)
        ).all()
        repos = db.execute(
            sa_select(*(cast(Any, Session.repo_name), *columns))
            .join(Session, col(Session.id) == PromptIndex.session_id)
            .where(in_window)
            .group_by(Session.repo_name)
        ).all()

    def group(row: Any) -> UsageGroup:
        name, prompts, tokens_in, tokens_out, cached, cost = row
        return UsageGroup(
            name=name,
            prompts=prompts,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cached_tokens=cached,
            cost_usd=cost,
        )

    def order(rows: Sequence[Any]) -> list[UsageGroup]:
        groups = [group(r) for r in rows]
        return sorted(
            groups, key=lambda g: (-g.cost_usd, -g.input_tokens - g.output_tokens, g.name)
        )

    summed = group(("", *total))
    return Usage.model_validate(summed.model_dump()), order(people), order(repos)


def compute_stats(engine: Engine, window_days: int = 30, now: float | None = None) -> Stats:
    now = now or time.time()
    since = now - window_days * 86400
    with DB(engine) as db:
        sessions = db.exec(
            select(Session.created_at, Session.pr_state).where(col(Session.created_at) >= since)
        ).all()
        prompts = db.exec(
            select(
                PromptIndex.created_at,
                PromptIndex.start_mode,
                PromptIndex.start_ms,
                PromptIndex.first_model_ms,
            ).where(col(PromptIndex.created_at) >= since)
        ).all()
        active = db.exec(
            select(User.login)
            .join(PromptIndex, col(PromptIndex.user_id) == User.id)
            .where(col(PromptIndex.created_at) >= now - 300, PromptIndex.source != "agent")
            .distinct()
        ).all()
    merged = sum(1 for _, state in sessions if state == "merged")
    session_days = Counter(_day(created) for created, _ in sessions)
    prompt_days = Counter(_day(created) for created, *_ in prompts)
    days = sorted(set(session_days) | set(prompt_days))
    by_mode: dict[str, list[int]] = {"warm": [], "image": [], "snapshot": [], "cold": []}
    usage, by_person, by_repo = _usage(engine, since)
    first_model: list[int] = []
    for _, mode, start_ms, first_ms in prompts:
        if mode is not None and start_ms is not None:
            by_mode.setdefault(mode, []).append(start_ms)
        if first_ms is not None:
            first_model.append(first_ms)
    return Stats(
        window_days=window_days,
        sessions=len(sessions),
        merged=merged,
        merged_share=round(merged / len(sessions), 4) if sessions else 0.0,
        per_day=[DayStats(date=d, sessions=session_days[d], prompts=prompt_days[d]) for d in days],
        active_humans_5m=len(active),
        active_humans=sorted(active),
        start_latency={mode: _latency(values) for mode, values in by_mode.items()},
        first_model_request=_latency(first_model),
        usage=usage,
        usage_by_person=by_person,
        usage_by_repo=by_repo,
    )
