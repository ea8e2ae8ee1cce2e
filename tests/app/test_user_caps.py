"""What one person may hold at once: sessions that are not over (NIGHTSHIFT_MAX_SESSIONS_PER_USER)
and open event streams (NIGHTSHIFT_MAX_STREAMS_PER_USER), each answered with 429 past the cap."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.schemas import RepoCreate
from tests.factories import Person, make_person, make_repo, wait_for
from tests.fakes.server import BackgroundServer


@pytest.fixture
def capped(make_settings: Any, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    yield from _capped(make_settings, tmp_path)


def _capped(make_settings: Any, tmp_path: Path, **extra: Any) -> Iterator[tuple[Any, str]]:
    """A server whose sessions stay queued (nothing runs them), with small caps."""
    from app.main import create_app
    from app.runtime import build_runtime

    # Every creation of a burst is taken in at once: the cap is under test here, not the
    # backlog (whose 200 ms wait a loaded machine can outlast, shedding one with a 503).
    settings = make_settings(
        max_sessions_per_user=2, max_streams_per_user=2, max_pending_creates=16, **extra
    )
    runtime = build_runtime(settings)
    runtime.sessions.dispatcher = None
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    try:
        with BackgroundServer(create_app(runtime=runtime)) as server:
            yield runtime, server.url
    finally:
        runtime.close()


def _client(url: str, person: Person) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {person.token}"}, timeout=30
    )


def test_sessions_past_the_cap_are_refused_with_429_until_one_is_over(
    capped: tuple[Any, str],
) -> None:
    runtime, url = capped
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    bob = make_person(runtime, "bob", "Bob", "bob@example.com")
    with _client(url, alice) as api:
        first, second = (
            api.post("/api/sessions", json={"repo": "proj", "prompt": f"task {i}"}).json()
            for i in (1, 2)
        )
        refused = api.post("/api/sessions", json={"repo": "proj", "prompt": "task 3"})
        assert refused.status_code == 429
        assert "NIGHTSHIFT_MAX_SESSIONS_PER_USER=2" in refused.json()["detail"]
        assert api.get("/api/sessions").json()["total"] == 2  # nothing was created
        # Another person has caps of their own.
        with _client(url, bob) as as_bob:
            assert (
                as_bob.post("/api/sessions", json={"repo": "proj", "prompt": "x"}).status_code
                == 201
            )
        # A session that is over frees its place.
        assert api.post(f"/api/sessions/{first['id']}/stop").status_code == 200
        wait_for(lambda: api.get(f"/api/sessions/{first['id']}").json()["status"] == "stopped")
        third = api.post("/api/sessions", json={"repo": "proj", "prompt": "task 3"})
        assert third.status_code == 201
        # A follow-up that would wake a stopped session counts too; one to a live one does not.
        woken = api.post(f"/api/sessions/{first['id']}/prompts", json={"text": "more"})
        assert woken.status_code == 429
        more = api.post(f"/api/sessions/{second['id']}/prompts", json={"text": "more"})
        assert more.status_code == 202


def test_event_streams_past_the_cap_are_refused(capped: tuple[Any, str]) -> None:
    runtime, url = capped
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    bob = make_person(runtime, "bob", "Bob", "bob@example.com")
    with _client(url, alice) as api:
        session_id = api.post("/api/sessions", json={"repo": "proj", "prompt": "t"}).json()["id"]
    ws_url = url.replace("http://", "ws://") + f"/api/sessions/{session_id}/stream"
    auth = {"Authorization": f"Bearer {alice.token}"}
    with connect(ws_url, additional_headers=auth) as one, connect(ws_url, additional_headers=auth):
        one.recv(timeout=10)  # streaming: the stored events arrive
        wait_for(lambda: runtime.stream_slots.count(alice.user.id) == 2)
        # The third WebSocket is accepted, then closed with 4429 and the reason.
        with (
            connect(ws_url, additional_headers=auth) as third,
            pytest.raises(ConnectionClosed) as refused,
        ):
            third.recv(timeout=10)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4429
        assert refused.value.rcvd.reason.endswith(
            "(NIGHTSHIFT_MAX_STREAMS_PER_USER=2); close one and retry"
        )
        # SSE streams count against the same cap.
        sse = httpx.get(f"{url}/api/sessions/{session_id}/events/stream", headers=auth, timeout=10)
        assert sse.status_code == 429 and "NIGHTSHIFT_MAX_STREAMS_PER_USER" in sse.text
        changes = httpx.get(f"{url}/api/sessions/changes", headers=auth, timeout=10)
        assert changes.status_code == 429
        # Bob is not affected.
        bob_auth = {"Authorization": f"Bearer {bob.token}"}
        with connect(ws_url, additional_headers=bob_auth) as bobs:
            assert bobs.recv(timeout=10)
    # Closing streams gives the places back.
    wait_for(lambda: runtime.stream_slots.count(alice.user.id) == 0, what="slots freed")
    with httpx.stream(
        "GET", f"{url}/api/sessions/{session_id}/events/stream", headers=auth, timeout=10
    ) as sse:
        assert sse.status_code == 200
        assert next(sse.iter_lines()) == "retry: 2000"
    wait_for(lambda: runtime.stream_slots.count(alice.user.id) == 0, what="SSE slot freed")


def test_a_slot_is_freed_when_a_stream_response_never_starts(capped: tuple[Any, str]) -> None:
    """An SSE response dropped before its body runs (the client left at once) frees its slot."""
    from starlette.requests import Request

    from app.api.routes.sessions import stream_events_sse

    runtime, _url = capped
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    session_id = runtime.sessions.create(alice.user, "proj", "t").id
    scope = {
        "type": "http",
        "method": "GET",
        "path": f"/api/sessions/{session_id}/events/stream",
        "headers": [(b"authorization", f"Bearer {alice.token}".encode())],
        "query_string": b"",
    }
    response = asyncio.run(
        stream_events_sse(
            session_id,
            Request(scope),
            user=alice.user,
            sessions=runtime.sessions,
            hub=runtime.hub,
            slots=runtime.stream_slots,
            after=0,
        )
    )
    assert runtime.stream_slots.count(alice.user.id) == 1
    del response
    assert runtime.stream_slots.count(alice.user.id) == 0


@pytest.mark.parametrize("control_db", ["sqlite", "postgresql"])
def test_concurrent_creations_never_pass_the_cap(
    control_db: str, make_settings: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Twelve creations at once with two places: exactly two pass (the count and the insert
    are one step), and the refused ones leave no session file behind."""
    import threading

    extra = {}
    if control_db == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    capped = _capped(make_settings, tmp_path, **extra)
    runtime, url = next(capped)
    request.addfinalizer(lambda: next(capped, None))
    carol = make_person(runtime, "carol", "Carol", "carol@example.com")
    barrier = threading.Barrier(12)
    codes: list[int] = []

    def create(i: int) -> None:
        with _client(url, carol) as api:
            barrier.wait()
            r = api.post("/api/sessions", json={"repo": "proj", "prompt": f"burst {i}"})
            codes.append(r.status_code)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(codes) == [201, 201] + [429] * 10
    with _client(url, carol) as api:
        assert api.get("/api/sessions").json()["total"] == 2
    files = list((runtime.settings.data_dir / "sessions").glob("*/*.db"))
    assert len(files) == 2
