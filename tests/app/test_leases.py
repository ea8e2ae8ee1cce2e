"""Lease renewals: heartbeats of many runners arriving together are written as one statement,
and each runner still hears its own answer (held, stop, lost)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

from sqlmodel import Session as DB

from app.models import Session
from tests.factories import make_sessions, wait_for


def test_renewals_arriving_together_share_a_statement_and_each_gets_its_answer(
    still_runtime: Any,
) -> None:
    runtime = still_runtime
    ids = make_sessions(runtime, 40)
    runners = runtime.runners
    for n, session_id in enumerate(ids):
        assert runners.acquire_lease(session_id, f"runner-{n}", 1.0)
    stopping, stolen = ids[0], ids[1]
    with DB(runtime.engine) as db:
        row = db.get(Session, stopping)
        assert row is not None
        row.stop_requested = True
        db.add(row)
        db.commit()
    answers: dict[str, str] = {}

    def heartbeat(n: int, session_id: str) -> None:
        runner = "someone-else" if session_id == stolen else f"runner-{n}"
        answers[session_id] = runners.renew_lease(session_id, runner, 60.0)

    before = runners.leases.statements
    # Another process holds the control DB's write lock: the first renewal waits for it
    # while the other 39 arrive, as a busy tick's would.
    control_db = sqlite3.connect(
        runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
    )
    control_db.execute("BEGIN IMMEDIATE")
    threads = [threading.Thread(target=heartbeat, args=(n, s)) for n, s in enumerate(ids)]
    try:
        for thread in threads:
            thread.start()
        wait_for(
            lambda: runners.leases.queued() == len(ids) - 1,
            what="the other renewals queued behind the first",
        )
    finally:
        control_db.execute("COMMIT")
        control_db.close()
    for thread in threads:
        thread.join()

    assert answers[stopping] == "stop"
    assert answers[stolen] == "lost"
    assert all(answers[s] == "held" for s in ids[2:])
    # 40 heartbeats at once: the first one's statement and one for the 39 queued behind it.
    assert runners.leases.statements - before == 2
    with DB(runtime.engine) as db:
        for session_id in ids:
            row = db.get(Session, session_id)
            assert row is not None and row.lease_expires_at is not None
            renewed = row.lease_expires_at > time.time() + 30
            assert renewed == (session_id != stolen)


def test_in_process_runners_heartbeats_on_one_tick_are_one_statement(still_runtime: Any) -> None:
    runtime = still_runtime
    ids = make_sessions(runtime, 30)
    control = runtime.deps.control
    leases = runtime.runners.leases

    async def scenario() -> list[str]:
        for n, session_id in enumerate(ids):
            assert await control.acquire_lease(session_id, f"runner-{n}", 1.0)
        before = leases.statements
        answers = await asyncio.gather(
            *(control.renew_lease(s, f"runner-{n}", 60.0) for n, s in enumerate(ids)),
            control.renew_lease(ids[0], "not-the-holder", 60.0),
        )
        assert leases.statements - before == 1
        return list(answers)

    answers = asyncio.run(scenario())
    assert answers == ["held"] * len(ids) + ["lost"]
