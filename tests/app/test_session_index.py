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
