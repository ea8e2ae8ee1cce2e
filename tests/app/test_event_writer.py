"""The event writer (the in-process runners' bus): events of many sessions published at once
are stored in order, in batches, and a publish returns only once its event is stored and its
index values are written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import Session as DB

from app.models import Session
from app.services.event_writer import EventWriter
from tests.factories import make_sessions
from workers.events import Notice, StatusChanged

STATUSES = ("starting", "running", "idle")


@pytest.fixture
def runtime(still_runtime: Any) -> Any:
    return still_runtime


def _status(runtime: Any, session_id: str) -> str:
    with DB(runtime.engine) as db:
        row = db.get(Session, session_id)
        assert row is not None
        return row.status


def test_a_burst_is_stored_in_order_in_batches_and_each_publish_reads_its_own_write(
    runtime: Any,
) -> None:
    writer = runtime.deps.bus
    assert isinstance(writer, EventWriter)
    ids = make_sessions(runtime, 40)
    first = {s: runtime.files.get(s).last_event_id() for s in ids}
    seen_by_watcher: list[tuple[str, str, str]] = []

    async def one(session_id: str) -> None:
        for n, status in enumerate(STATUSES):
            await writer.publish(session_id, Notice(message=f"step {n}"))
            await writer.publish(session_id, StatusChanged(status=status))
            # Returned: the index already says so (read-your-writes for the runner).
            assert _status(runtime, session_id) == status

    async def watch() -> None:
        # The sessions list's changes feed re-reads the index on an event: by then the
        # event's values are written.
        async for session_id, event in runtime.hub.watch(types=frozenset({"status"})):
            assert isinstance(event, StatusChanged)
            seen_by_watcher.append((session_id, event.status, _status(runtime, session_id)))
            if len(seen_by_watcher) == len(ids) * len(STATUSES):
                return

    async def scenario() -> None:
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        before = writer.batches
        await asyncio.gather(*(one(s) for s in ids))
        await asyncio.wait_for(watcher, 30)
        # 240 events: far fewer batches (each one a thread hand-off and one index write).
        assert 0 < writer.batches - before < len(ids) * len(STATUSES) * 2

    asyncio.run(scenario())
    for session_id in ids:
        events = runtime.files.get(session_id).events(after=first[session_id])
        assert [e.id for e in events] == list(
            range(first[session_id] + 1, first[session_id] + 1 + 2 * len(STATUSES))
        )
        assert [e.status for e in events if isinstance(e, StatusChanged)] == list(STATUSES)
    order = {status: n for n, status in enumerate(STATUSES)}
    assert len(seen_by_watcher) == len(ids) * len(STATUSES)
    for _session_id, status, indexed in seen_by_watcher:
        # The row may already be further on (a later event), never behind.
        assert order[indexed] >= order[status]


def test_a_failed_publish_reaches_its_publisher_and_spares_the_rest_of_its_batch(
    runtime: Any,
) -> None:
    writer = runtime.deps.bus
    (session_id,) = make_sessions(runtime, 1)

    async def scenario() -> list[BaseException | None]:
        results = await asyncio.gather(
            writer.publish(session_id, Notice(message="before")),
            writer.publish("0000nosuchid", Notice(message="lost")),
            writer.publish(session_id, Notice(message="after")),
            return_exceptions=True,
        )
        return list(results)

    results = asyncio.run(scenario())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], FileNotFoundError)
    messages = [e.message for e in runtime.files.get(session_id).events() if isinstance(e, Notice)]
    assert messages == ["before", "after"]


def test_after_close_events_are_still_stored(runtime: Any) -> None:
    writer = runtime.deps.bus
    (session_id,) = make_sessions(runtime, 1)

    async def scenario() -> None:
        await writer.publish(session_id, Notice(message="while open"))
        await writer.aclose()
        await writer.publish(session_id, StatusChanged(status="idle"))

    asyncio.run(scenario())
    assert _status(runtime, session_id) == "idle"
    kinds = [e.type for e in runtime.files.get(session_id).events()]
    assert kinds[-2:] == ["notice", "status"]


def test_the_event_list_shows_an_event_once_its_index_values_are_written(runtime: Any) -> None:
    from app.services.event_writer import StagedPublishes

    [session_id] = make_sessions(runtime, 1)
    before = [e.id for e in runtime.sessions.events(session_id)]
    staged = StagedPublishes(runtime.hub, runtime.sessions.index)
    with staged.batch():
        stored = staged.publish(session_id, StatusChanged(status="running"))
        assert stored is not None and stored.id is not None
        # Stored in the session's file, its status not yet in the index: not listed yet, as
        # it is not yet on the session's streams.
        assert runtime.files.get(session_id).last_event_id() == stored.id
        assert [e.id for e in runtime.sessions.events(session_id)] == before
        assert runtime.hub.listed_until(session_id) == stored.id - 1
    assert _status(runtime, session_id) == "running"
    assert [e.id for e in runtime.sessions.events(session_id)] == [*before, stored.id]
    assert runtime.hub.listed_until(session_id) is None
