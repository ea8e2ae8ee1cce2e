"""Shedding load: past NIGHTSHIFT_MAX_PENDING_CREATES prompts in flight, the API answers 503 with
`Retry-After` at once instead of queueing, and what it answered 2xx is kept."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.schemas import RepoCreate
from tests.factories import Person, make_person, make_repo, wait_for
from tests.fakes.server import BackgroundServer


@pytest.fixture
def one_at_a_time(make_settings: Any, tmp_path: Path) -> Iterator[tuple[Any, Any, str]]:
    """A server that takes in one prompt at a time (nothing runs the sessions)."""
    from app.main import create_app
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(max_pending_creates=1))
    runtime.sessions.dispatcher = None
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    app = create_app(runtime=runtime)
    try:
        with BackgroundServer(app) as server:
            yield runtime, app, server.url
    finally:
        runtime.close()


def _client(url: str, person: Person) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {person.token}"}, timeout=30
    )


def _session_files(runtime: Any) -> int:
    return len(list(runtime.sessions.files.root.glob("*/*.db")))


def test_a_full_backlog_sheds_with_retry_after_and_keeps_what_it_accepted(
    one_at_a_time: tuple[Any, Any, str],
) -> None:
    runtime, app, url = one_at_a_time
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    with _client(url, alice) as api:
        earlier = api.post("/api/sessions", json={"repo": "proj", "prompt": "earlier"})
        assert earlier.status_code == 201
        # Another process holds the control DB's write lock: the next creation waits for it,
        # and so stays in flight.
        control_db = sqlite3.connect(
            runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
        )
        control_db.execute("BEGIN IMMEDIATE")
        held: dict[str, httpx.Response] = {}
        first = threading.Thread(
            target=lambda: held.setdefault(
                "first", api.post("/api/sessions", json={"repo": "proj", "prompt": "held"})
            )
        )
        first.start()
        try:
            wait_for(lambda: app.state.prompt_backlog.in_flight == 1, what="a held creation")
            shed = api.post("/api/sessions", json={"repo": "proj", "prompt": "second"})
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert 50 <= int(shed.headers["nightshift-retry-after-ms"]) <= 1000
            assert "NIGHTSHIFT_MAX_PENDING_CREATES" in shed.json()["detail"]
            follow_up = api.post(
                f"/api/sessions/{earlier.json()['id']}/prompts", json={"text": "more"}
            )
            assert follow_up.status_code == 503 and "retry-after" in follow_up.headers
        finally:
            control_db.execute("COMMIT")
            control_db.close()
        first.join(30)
        assert held["first"].status_code == 201
        assert app.state.prompt_backlog.shed == 2
        # The shed requests changed nothing; sent again, they are served.
        assert _session_files(runtime) == 2
        again = api.post("/api/sessions", json={"repo": "proj", "prompt": "second"})
        assert again.status_code == 201
        more = api.post(f"/api/sessions/{earlier.json()['id']}/prompts", json={"text": "more"})
        assert more.status_code == 202
        listed = api.get("/api/sessions").json()
        assert listed["total"] == 3
        assert sorted(s["title"] for s in listed["sessions"]) == ["earlier", "held", "second"]
        prompts = api.get(f"/api/sessions/{earlier.json()['id']}/prompts").json()
        assert [p["text"] for p in prompts] == ["earlier", "more"]


def test_a_request_that_finds_no_slot_waits_briefly_for_one_before_it_is_shed(
    make_settings: Any, tmp_path: Path
) -> None:
    """A slot freed within NIGHTSHIFT_MAX_PENDING_WAIT_MS goes to the request waiting for it
    (first come, first served) instead of a 503."""
    from app.main import create_app
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(max_pending_creates=1, max_pending_wait_ms=10_000))
    runtime.sessions.dispatcher = None
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
    app = create_app(runtime=runtime)
    try:
        with BackgroundServer(app) as server:
            alice = make_person(runtime, "alice", "Alice", "alice@example.com")
            backlog = app.state.prompt_backlog
            control_db = sqlite3.connect(
                runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
            )
            control_db.execute("BEGIN IMMEDIATE")
            answers: dict[str, httpx.Response] = {}

            def post(name: str) -> None:
                with _client(server.url, alice) as api:
                    answers[name] = api.post("/api/sessions", json={"repo": "proj", "prompt": name})

            threads = [threading.Thread(target=post, args=(name,)) for name in ("held", "waiting")]
            try:
                threads[0].start()
                wait_for(lambda: backlog.in_flight == 1, what="a held creation")
                threads[1].start()
                wait_for(lambda: len(backlog.waiting) == 1, what="a creation waiting for a slot")
            finally:
                control_db.execute("COMMIT")
                control_db.close()
            for thread in threads:
                thread.join(30)
            assert answers["held"].status_code == 201
            assert answers["waiting"].status_code == 201
            assert backlog.shed == 0 and backlog.in_flight == 0 and not backlog.waiting
    finally:
        runtime.close()


def test_only_a_shed_answer_is_sent_again_and_its_wait_is_bounded() -> None:
    """Our clients retry a 503 only when the backlog marked it (nothing was done): a 503 of a
    forwarded request that may have reached the owner is not sent again."""
    from app.overload import shed_retry_s

    assert shed_retry_s(503, {"nightshift-retry-after-ms": "250"}) == 0.25
    assert shed_retry_s(503, {"nightshift-retry-after-ms": "1"}) == 0.05
    assert shed_retry_s(503, {"nightshift-retry-after-ms": "86400000"}) == 5.0
    for junk in ("", "soon", "nan", "inf"):
        assert shed_retry_s(503, {"nightshift-retry-after-ms": junk}) is None
    assert shed_retry_s(503, {"retry-after": "1"}) is None
    assert shed_retry_s(429, {"nightshift-retry-after-ms": "250"}) is None


def test_the_hint_grows_with_the_requests_ahead_and_is_spread() -> None:
    """Shed behind 16 waiters with slots freeing every 100 ms, a request is told to come back
    once they are served, less the 200 ms it may wait then: 1.5 s, spread ±50%. Each request
    shed in the last second counts as one more ahead: the more are shed, the longer the wait."""
    import asyncio

    from app.overload import Backlog

    async def hint_behind(waiters: int) -> int:
        backlog = Backlog(limit=4, wait_s=0.2, interval_s=0.1)
        loop = asyncio.get_running_loop()
        backlog.waiting.extend(loop.create_future() for _ in range(waiters))
        return backlog.retry_hint_ms()

    spread = [asyncio.run(hint_behind(16)) for _ in range(200)]
    assert 750 <= min(spread) < 1100 and 1900 < max(spread) <= 2250
    assert 50 <= asyncio.run(hint_behind(0)) <= 150
    backlog = Backlog(limit=4, wait_s=0.2, interval_s=0.1)
    hints = [backlog.retry_hint_ms() for _ in range(30)]  # 30 shed within a second
    assert hints[0] <= 150 and hints[-1] >= 1400 and max(hints) <= 5000


def test_the_cli_client_sends_a_shed_prompt_again_once_a_slot_frees(
    one_at_a_time: tuple[Any, Any, str],
) -> None:
    """`Client` (the CLI's) waits out a shed and sends the same request again, saying so each
    time; it is created once. Past its patience it gives the server's words as the error."""
    from prometheus_client import REGISTRY

    from app.commands.client import ApiError, Client

    runtime, app, url = one_at_a_time
    alice = make_person(runtime, "alice", "Alice", "alice@example.com")
    shed_before = REGISTRY.get_sample_value("nightshift_prompts_shed_total") or 0.0
    taking_in = REGISTRY.get_sample_value("nightshift_prompts_taking_in") or 0.0
    busy: list[tuple[float, str]] = []
    client = Client(url, alice.token, on_busy=lambda wait, why: busy.append((wait, why)))
    impatient = Client(url, alice.token, patience_s=0.2)
    control_db = sqlite3.connect(
        runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
    )
    control_db.execute("BEGIN IMMEDIATE")
    answers: dict[str, Any] = {}
    held = threading.Thread(
        target=lambda: answers.setdefault("held", client.create_session("proj", "held", None))
    )
    retried = threading.Thread(
        target=lambda: answers.setdefault("retried", client.create_session("proj", "again", None))
    )
    try:
        held.start()
        wait_for(lambda: app.state.prompt_backlog.in_flight == 1, what="a held creation")
        assert REGISTRY.get_sample_value("nightshift_prompts_taking_in") == taking_in + 1
        with pytest.raises(ApiError, match="NIGHTSHIFT_MAX_PENDING_CREATES") as refused:
            impatient.create_session("proj", "impatient", None)
        assert refused.value.status == 503
        retried.start()
        wait_for(lambda: len(busy) >= 2, what="the client to be shed twice")
    finally:
        control_db.execute("COMMIT")
        control_db.close()
    held.join(30)
    retried.join(30)
    client.close()
    impatient.close()
    assert answers["held"]["title"] == "held" and answers["retried"]["title"] == "again"
    assert all(0.05 <= wait <= 5 and "nothing was created" in why for wait, why in busy)
    titles = [
        s["title"]
        for s in httpx.get(
            f"{url}/api/sessions", headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
        ).json()["sessions"]
    ]
    assert sorted(titles) == ["again", "held"]
    shed = REGISTRY.get_sample_value("nightshift_prompts_shed_total") - shed_before
    assert shed == app.state.prompt_backlog.shed >= 3
    assert REGISTRY.get_sample_value("nightshift_prompts_taking_in") == taking_in


def test_an_intake_caller_cancelled_while_it_waits_leaves_no_slot_taken() -> None:
    """`Intake` takes slots on the backlog's own loop: a caller on another loop that is
    cancelled while it waits for one gives back the slot it is handed later."""
    import asyncio

    from app.overload import Backlog, Intake

    home = asyncio.new_event_loop()
    runner = threading.Thread(target=home.run_forever, daemon=True)
    runner.start()
    backlog = Backlog(1, wait_s=0.05)
    intake = Intake()
    intake.bind(backlog, home)
    told: list[str] = []

    async def waits() -> None:
        told.append("busy")

    async def scenario() -> None:
        async with intake.slot(waits):
            assert backlog.in_flight == 1 and told == []
            waiting = asyncio.create_task(intake.slot(waits).__aenter__())
            await asyncio.sleep(0.3)  # past the backlog's wait: it waits its turn, told once
            assert told == ["busy"] and not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        # The first slot went back; the cancelled caller's retry took it and gave it back.
        for _ in range(100):
            if backlog.in_flight == 0 and not backlog.waiting:
                break
            await asyncio.sleep(0.05)
        assert backlog.in_flight == 0 and intake.deferred == 1
        async with intake.slot(waits):  # and the next caller gets it at once
            assert backlog.in_flight == 1 and told == ["busy"]

    try:
        asyncio.run(scenario())
    finally:
        home.call_soon_threadsafe(home.stop)
        runner.join(5)
        home.close()
    assert backlog.in_flight == 0


def test_an_unbound_intake_lets_every_prompt_through() -> None:
    import asyncio

    from app.overload import Intake

    async def scenario() -> int:
        async with Intake().slot(lambda: asyncio.sleep(0)):
            return 1

    assert asyncio.run(scenario()) == 1
