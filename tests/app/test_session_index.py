"""The index writer: events from many sessions at once land in the control DB, each session's
last value winning, in fewer transactions than events when they arrive together."""

from __future__ import annotations

import threading
from typing import Any

from sqlmodel import Session as DB

from app.models import Session
from app.schemas import RepoCreate
from tests.factories import make_person, make_repo
from workers.events import SandboxReady, StatusChanged


def test_concurrent_events_of_many_sessions_all_reach_the_index(
    make_settings: Any, tmp_path: Any
) -> None:
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings())
    runtime.sessions.dispatcher = None
    try:
        runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
        alice = make_person(runtime, "alice", "Alice", "alice@example.com")
        runtime.sessions.max_active_per_user = 100
        ids = [runtime.sessions.create(alice.user, "proj", f"task {n}").id for n in range(12)]
        before = runtime.sessions.index.batches

        def run(session_id: str) -> None:
            for status in ("starting", "running", "idle"):
                runtime.hub.publish(session_id, StatusChanged(status=status))
            runtime.hub.publish(
                session_id,
                SandboxReady(mode="warm", sandbox_id="sb", image="img", ms_since_prompt=42),
            )

        threads = [threading.Thread(target=run, args=(s,)) for s in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with DB(runtime.engine) as db:
            rows = [db.get(Session, s) for s in ids]
        assert all(r is not None and r.status == "idle" for r in rows)
        assert all(r is not None and (r.start_mode, r.start_ms) == ("warm", 42) for r in rows)
        assert 0 < runtime.sessions.index.batches - before <= 4 * len(ids)
    finally:
        runtime.close()


def test_usage_totals_add_up_when_events_share_a_batch(make_settings: Any, tmp_path: Any) -> None:
    """Usage is an increment, not a value: when many turns' usage lands in one transaction
    (coalesced per session), none of it is lost. The hub serialises one session's events, so
    the writer is driven here from many threads at once, as several sessions' would be."""
    from app.runtime import build_runtime
    from workers.events import UsageReported

    runtime = build_runtime(make_settings())
    runtime.sessions.dispatcher = None
    try:
        runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
        alice = make_person(runtime, "alice", "Alice", "alice@example.com")
        session_id = runtime.sessions.create(alice.user, "proj", "task").id
        before = runtime.sessions.index.batches

        def run() -> None:
            for _ in range(10):
                runtime.hub.publish(
                    session_id,
                    UsageReported(
                        input_tokens=100, output_tokens=10, cached_tokens=5, cost_usd=0.5
                    ),
                )

        threads = [threading.Thread(target=run) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with DB(runtime.engine) as db:
            row = db.get(Session, session_id)
        assert row is not None
        assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (8000, 800, 400)
        assert abs(row.cost_usd - 40.0) < 1e-9
        assert runtime.sessions.index.batches - before <= 80
    finally:
        runtime.close()


def test_increments_of_one_batch_add_up_and_values_replace() -> None:
    from app.services.session_index import Increment, _merge

    pending: dict[str, object] = {}
    _merge(pending, {"input_tokens": Increment(100), "status": "running"})
    _merge(pending, {"input_tokens": Increment(40), "status": "idle"})
    assert pending == {"input_tokens": Increment(140), "status": "idle"}
