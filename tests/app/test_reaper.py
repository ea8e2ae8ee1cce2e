"""The reaper: a session whose runner died is handed to another runner, its interrupted
attempt stays on record, and after MAX_ATTEMPTS deaths it fails with a clear event.

The API runs in distributed mode with no worker consuming its queue, so the test plays the
runners: it takes leases and claims prompts under the names of processes that do not exist.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.schemas import RepoCreate
from app.services.runners import MAX_ATTEMPTS
from tests.factories import make_person, make_repo
from workers.events import ChatMessage, MessageAdded
from workers.wire import dispatch_key

pytestmark = pytest.mark.redis


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


@pytest.fixture
def rt(make_settings: Any, redis_url: str) -> Iterator[Any]:
    from app.runtime import build_runtime

    runtime = build_runtime(
        make_settings(broker_url=redis_url, worker_token="t" * 24, reap_interval=3600)
    )
    yield runtime
    runtime.close()


@pytest.fixture
def session_id(rt: Any, tmp_path: Path) -> str:
    person = make_person(rt, "rita", "Rita Reaper", "rita@example.com")
    rt.repos.add(RepoCreate(url=str(make_repo(tmp_path, "reaped"))))
    created = str(rt.sessions.create(person.user, "reaped", "survive your runner").id)
    assert rt.dispatcher.flush()  # its run_session is in the queue (sent on a thread)
    return created


def _die_mid_prompt(rt: Any, session_id: str, host: str | None = None) -> str:
    """A runner takes the session, starts the prompt, says something, and dies."""
    runner = f"{host or socket.gethostname()}-{_dead_pid()}-abc123"
    assert rt.runners.acquire_lease(session_id, runner, 30)
    job = rt.runners.next_prompt(session_id, runner)
    rt.hub.publish(
        session_id,
        MessageAdded(
            message=ChatMessage(role="user", text=job.text), prompt_id=job.id, attempt=job.attempt
        ),
    )
    return runner


def test_a_dead_runners_prompt_runs_again_with_its_attempt_on_record(
    rt: Any, session_id: str, redis_url: str
) -> None:
    broker = redis.Redis.from_url(redis_url)
    broker.delete(dispatch_key(session_id))  # the first task was taken by the runner
    _die_mid_prompt(rt, session_id)
    assert rt.runners.reap() == [session_id]
    assert rt.dispatcher.flush()
    events = rt.sessions.events(session_id)
    notice = [e for e in events if e.type == "notice"][-1]
    assert (
        notice.attempt == 1 and notice.prompt_id == 1 and "runs again, resuming" in notice.message
    )
    row = rt.sessions.get(session_id)
    assert row.lease_owner is None and row.attempts == 1
    assert [p.state for p in rt.sessions.prompts(session_id)] == ["queued"]
    # The next attempt starts from the conversation before the prompt: nothing of attempt 1.
    assert rt.runners.context(session_id).history == []
    assert broker.exists(dispatch_key(session_id))  # dispatched again, once
    assert broker.llen("nightshift.sessions") == 2
    assert rt.runners.reap() == [session_id]  # still queued: the marker holds back copies
    assert rt.dispatcher.flush()
    assert broker.llen("nightshift.sessions") == 2
    job = rt.runners.next_prompt(session_id, "another-runner")
    assert job is not None and job.attempt == 2


def test_after_max_attempts_the_session_fails_with_a_clear_event(rt: Any, session_id: str) -> None:
    for _ in range(MAX_ATTEMPTS):
        _die_mid_prompt(rt, session_id)
        rt.runners.reap()
    row = rt.sessions.get(session_id)
    assert row.status == "failed"
    events = rt.sessions.events(session_id)
    error = next(e for e in events if e.type == "error")
    assert error.code == "attempts_exhausted" and str(MAX_ATTEMPTS) in error.message
    assert error.attempt == MAX_ATTEMPTS
    assert events[-1].type == "status" and events[-1].reason == "runner died repeatedly"
    assert [p.state for p in rt.sessions.prompts(session_id)] == ["failed"]
    assert rt.runners.reap() == []  # a failed session stays failed


def test_a_lapsed_lease_of_a_live_remote_runner_is_spared_right_after_a_restart(
    rt: Any, session_id: str
) -> None:
    runner = _die_mid_prompt(rt, session_id, host="another-host")
    later = rt.sessions.get(session_id).lease_expires_at + 1
    assert rt.runners.reap(later, trust_expiry=False) == []
    assert rt.sessions.get(session_id).lease_owner == runner
    assert rt.runners.reap(later) == [session_id]
    assert rt.sessions.get(session_id).lease_owner is None


def test_a_session_whose_file_is_elsewhere_is_listed_and_left_alone(
    rt: Any, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A control DB shared with another data dir indexes sessions whose files are not here:
    the list still answers, their events say why they cannot be read, and the reaper leaves
    them alone (and says so once, not every round)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    _die_mid_prompt(rt, session_id)
    before = rt.sessions.get(session_id)
    rt.files.close()
    rt.files.path(session_id).unlink()
    with caplog.at_level("WARNING", logger="nightshift.runners"):
        assert rt.runners.reap() == [] and rt.runners.reap() == []
    assert sum("has no file under" in r.getMessage() for r in caplog.records) == 1
    after = rt.sessions.get(session_id)
    assert (after.status, after.lease_owner) == (before.status, before.lease_owner)
    person = make_person(rt, "lister", "Lister Example", "lister@example.com")
    with TestClient(create_app(rt.settings, runtime=rt)) as client:
        headers = {"Authorization": f"Bearer {person.token}"}
        listed = client.get("/api/sessions", headers=headers)
        assert listed.status_code == 200, listed.text
        assert [s["last_event_id"] for s in listed.json()["sessions"]] == [0]
        events = client.get(f"/api/sessions/{session_id}/events", headers=headers)
        assert events.status_code == 503 and "NIGHTSHIFT_DATA_DIR" in events.json()["detail"]


def test_a_runner_that_stopped_on_request_and_let_go_is_not_stopped_again(
    rt: Any, session_id: str
) -> None:
    """A runner stops its session on request, its events land, and it gives its lease back;
    the session's row in the control DB takes the new status a moment later (index writes
    are batched). A reaper round in that moment finds an active session with no runner: it
    must see in the session's file that it was stopped, not stop it a second time as if its
    runner had died (a distributed run on a slow machine once ended on that reason)."""
    from sqlmodel import update

    from app.models import Session
    from workers.events import PromptFinished, StatusChanged

    runner = _die_mid_prompt(rt, session_id)
    rt.sessions.stop(make_person(rt, "rita", "Rita Reaper", "rita@example.com").user, session_id)
    rt.hub.publish(
        session_id,
        PromptFinished(outcome="stopped", summary="stopped on request", prompt_id=1, attempt=1),
    )
    rt.hub.publish(session_id, StatusChanged(status="stopped", reason="stopped on request"))
    rt.runners.release_lease(session_id, runner)
    with rt.engine.begin() as conn:  # the index, as it was before its batch was written
        conn.execute(update(Session).where(Session.id == session_id).values(status="running"))
    assert rt.runners.reap() == []
    reasons = [e.reason for e in rt.sessions.events(session_id) if e.type == "status"]
    assert (
        reasons[-1] == "stopped on request" and "stopped while its runner was gone" not in reasons
    )
