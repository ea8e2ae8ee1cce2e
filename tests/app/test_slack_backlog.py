"""The Slack bot's prompts take the server's backlog slots like POSTs do (`app/overload.py`
`Intake`): when the backlog is full a mention or a follow-up is not dropped nor refused, it
waits its turn (the person is told once) and goes in by itself when a slot frees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.overload import Intake
from app.schemas import RepoCreate
from tests.factories import make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn

pytestmark = pytest.mark.slow

ALICE = "UALICE0001"


@contextmanager
def _slot_held(intake: Intake) -> Iterator[None]:
    """Hold the backlog's only slot from a loop of this test's own, as another prompt would."""
    held, release = threading.Event(), threading.Event()

    async def hold() -> None:
        async with intake.slot(lambda: asyncio.sleep(0)):
            held.set()
            await asyncio.to_thread(release.wait, 60)

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join(10)


def test_a_mention_and_a_follow_up_wait_for_a_full_backlog_and_then_go_in(
    make_slack_world: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    world = make_slack_world(max_pending_creates=1, max_pending_wait_ms=0)
    world.runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    alice = make_person(world.runtime, "alice", "Alice Example", "alice@example.com")
    world.runtime.slack.links.link(ALICE, alice.user)
    openai_fake.script("changelog", Turn.tool("finish", summary="Tidied."))
    openai_fake.script("typo", Turn.tool("finish", summary="Fixed."))
    intake: Intake = world.runtime.slack.intake
    backlog = intake.backlog
    assert backlog is not None and backlog.limit == 1  # bound by the app to its backlog

    with _slot_held(intake):
        mention = world.mention(ALICE, "please tidy the changelog")
        wait_for(lambda: world.says(mention.ts, "waits for its turn"), 20, "the busy note")
        # Nothing was made while the slot was held, and nothing was refused.
        assert world.runtime.sessions.query(limit=10)[0] == []
        assert world.status_message(mention.ts) is None
    status = wait_for(lambda: world.status_message(mention.ts), 40, "the status message")
    assert status is not None
    rows = wait_for(
        lambda: (
            (r := world.runtime.sessions.query(limit=10)[0]) and r[0].status == "finished" and r
        ),
        40,
        "the session to finish",
    )
    assert len(rows) == 1 and intake.deferred == 1

    with _slot_held(intake):
        world.mention(ALICE, "and fix the typo", thread_ts=mention.ts)
        wait_for(
            lambda: world.says(mention.ts, "your follow-up waits for its turn"),
            20,
            "the follow-up's busy note",
        )
        assert len(world.runtime.sessions.prompts(rows[0].id)) == 1
    wait_for(lambda: world.says(mention.ts, "queued your follow-up"), 20, "the follow-up queued")
    wait_for(
        lambda: [p.state for p in world.runtime.sessions.prompts(rows[0].id)] == ["done", "done"],
        40,
        "both prompts to be done",
    )
    assert intake.deferred == 2
    wait_for(lambda: backlog.in_flight == 0, 10, "every slot given back")
