"""An idle runner (keeping its sandbox for follow-ups) takes a new prompt at once: the
dispatcher wakes it instead of leaving it to its periodic look at the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.factories import make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn


def test_a_follow_up_wakes_the_idle_runner(
    make_settings: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    from app.runtime import build_runtime
    from app.schemas import RepoCreate

    rt = build_runtime(
        make_settings(
            model="openai:fake-model",
            openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
            openai_api_key="sk-test-fake-key-0123456789abcdef",
            idle_seconds=120,
        )
    )
    rt.start()
    try:
        person = make_person(rt, "ida", "Ida Idle", "ida@example.com")
        rt.repos.add(RepoCreate(url=str(make_repo(tmp_path, "idle"))))
        openai_fake.script("first", Turn.tool("finish", summary="one"))
        openai_fake.script("second", Turn.tool("finish", summary="two"))
        session = rt.sessions.create(person.user, "idle", "first")
        wait_for(lambda: rt.sessions.get(session.id).status == "idle", 20, "idle")
        rt.sessions.add_prompt(person.user, session.id, "second")
        # Well before the runner's own periodic check of its queue (30 s).
        wait_for(
            lambda: [p.state for p in rt.sessions.prompts(session.id)] == ["done", "done"],
            10,
            "the follow-up to run",
        )
        events = rt.sessions.events(session.id)
        assert sum(e.type == "sandbox_ready" for e in events) == 1
        rt.sessions.stop(person.user, session.id)
    finally:
        rt.close()
