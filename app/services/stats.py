"""Stats: does the platform pay off? Merged PRs first, then use and start-up latency."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session as DB
from sqlmodel import col, select

from app.models import PromptIndex, Session, User
from app.schemas import DayStats, LatencyStats, Stats


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
    )
