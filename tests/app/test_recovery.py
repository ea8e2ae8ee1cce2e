"""Prompts and events survive a crash: a session whose process died resumes in the next one."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from app.runtime import build_runtime
from app.schemas import RepoCreate
from tests.factories import git, make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn


def test_interrupted_prompt_resumes_after_restart(
    make_settings: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    settings = make_settings(
        model="openai:fake",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-0123456789abcdefghij",
        lease_ttl=1.5,
    )
    gate = threading.Event()
    openai_fake.script(
        "survive",
        Turn.tool("write_file", "Starting.", path="half.txt", content="1"),
        Turn(text="Hanging.", gate=gate),
    )
    repo = make_repo(tmp_path, "proj")
    first = build_runtime(settings)
    first.start()
    person = make_person(first, "alice", "Alice Example", "alice@example.com")
    first.repos.add(RepoCreate(url=str(repo)))
    session = first.sessions.create(person.user, "proj", "survive a crash")
    # The first turn's write returned and its checkpoint was stored.
    wait_for(
        lambda: any(e.type == "snapshot" for e in first.sessions.events(session.id)),
        20,
        "first tool call and its checkpoint",
    )
    before = [e.id for e in first.sessions.events(session.id)]
    first.close()  # the process goes away mid-prompt: no stop, the lease is left to expire

    # The resumed run asks for turn 2 only: turn 1 is not played again.
    openai_fake.script(
        "survive",
        Turn.tool("write_file", "Not asked again.", path="again.txt", content="x"),
        Turn.tool("write_file", "Then more.", path="whole.txt", content="2"),
        Turn.tool("finish", summary="survived", title="Survive"),
    )
    second = build_runtime(settings)
    second.start()
    try:
        second.runners.reap(
            now=second.sessions.get(session.id).lease_expires_at + 1
        )  # as the reaper would
        wait_for(
            lambda: second.sessions.get(session.id).status in ("finished", "failed"), 30, "resume"
        )
        row = second.sessions.get(session.id)
        assert row.status == "finished"
        events = second.sessions.events(session.id, 0, 10_000)
        ids = [e.id for e in events]
        assert ids[: len(before)] == before and ids == sorted(
            set(ids)
        )  # nothing lost, nothing doubled
        attempts = {e.attempt for e in events if e.prompt_id == 1}
        assert attempts == {1, 2}
        assert any(e.type == "prompt_finished" and e.attempt == 2 for e in events)
        branch = f"nightshift/{session.id}"
        assert git(repo, "show", f"{branch}:whole.txt") == "2"
        assert git(repo, "show", f"{branch}:half.txt") == "1"  # from the checkpoint
        listed = git(repo, "ls-tree", "--name-only", branch).split()
        assert listed == ["README.md", "half.txt", "whole.txt"]
        resumed = [e for e in events if e.type == "run_resumed"]
        assert [(e.attempt, e.from_turn, e.rerun) for e in resumed] == [(2, 2, [])]  # type: ignore[union-attr]
        prompts = second.sessions.prompts(session.id)
        assert [(p.state, p.attempt) for p in prompts] == [("done", 2)]
    finally:
        gate.set()
        second.close()


def test_old_snapshots_are_collected_except_those_active_sessions_need(
    runtime: Any, alice: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    import time as _time

    openai_fake.script(
        "snap",
        Turn.tool("write_file", path="s.txt", content="s"),
        Turn.tool("finish", summary="ok"),
    )
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    done = runtime.sessions.create(alice.user, "proj", "snap one")
    wait_for(lambda: runtime.sessions.get(done.id).status == "finished", 30, "first session")
    snap = runtime.sessions.get(done.id).snapshot
    assert snap and Path(snap["location"]).exists()
    # Age the snapshot past the limit; a finished session does not keep it.
    meta = Path(snap["location"]).parent / "meta.json"
    stamped = json.loads(meta.read_text())
    stamped["created_at"] = _time.time() - 30 * 86400
    meta.write_text(json.dumps(stamped))
    from sqlmodel import Session as DB

    from app.models import Session as Row

    with DB(runtime.engine) as db:
        row = db.get(Row, done.id)
        row.status = "idle"  # as if it awaited a follow-up: its snapshot must stay
        db.add(row)
        db.commit()
    assert runtime.collect_snapshots() == []
    with DB(runtime.engine) as db:
        row = db.get(Row, done.id)
        row.status = "finished"
        db.add(row)
        db.commit()
    assert runtime.collect_snapshots() == [snap["id"]]
    assert not Path(snap["location"]).exists()
