"""No request handler blocks the API's event loop for more than 50 ms.

The server runs on asyncio's own loop so `LoopWatch` can time each callback; every kind of
request the web viewer, the CLI and the bots make is sent, several of them at once, while
sessions run. A handler that calls something blocking from `async def` shows up here by
name, however loaded the machine is (time spent waiting for a CPU is not counted).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from websockets.sync.client import connect

from tests.factories import ApiClient, make_person, make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn
from tests.fakes.server import BackgroundServer
from tests.loopwatch import LoopWatch

pytestmark = pytest.mark.slow

_OVER = ("idle", "finished", "failed", "stopped")


@pytest.fixture
def watched(runtime: Any) -> Iterator[tuple[BackgroundServer, Any]]:
    from app.main import create_app

    app = create_app(runtime=runtime)
    blocking = APIRouter()

    @blocking.get("/test-only/computes")
    async def computes() -> dict[str, bool]:
        # What the watch must catch: computing for 120 ms inside `async def`.
        start = time.thread_time()
        while time.thread_time() - start < 0.12:
            sum(range(1000))
        return {"blocked": True}

    @blocking.get("/test-only/sleeps")
    async def sleeps() -> dict[str, bool]:
        time.sleep(0.4)  # and a blocking call inside `async def`
        return {"blocked": True}

    @blocking.get("/test-only/starved")
    async def starved() -> dict[str, bool]:
        # What the watch must not blame on the handler: another thread holding the GIL
        # for 400 ms (a C call through a handle that keeps it) while the handler waits.
        libc = ctypes.PyDLL(None)
        threading.Thread(target=libc.usleep, args=(400_000,), daemon=True).start()
        start = time.thread_time()
        while time.thread_time() - start < 0.01:
            sum(range(1000))
        return {"blocked": False}

    app.include_router(blocking)
    with BackgroundServer(app, loop="asyncio") as server:
        yield server, app


def _wait_ident(server: BackgroundServer) -> int:
    assert server.thread.ident is not None
    return server.thread.ident


def test_the_watch_catches_a_handler_that_blocks(
    watched: tuple[BackgroundServer, Any], runtime: Any
) -> None:
    server, _ = watched
    person = make_person(runtime, "alice", "Alice Example", "alice@example.com")
    auth = {"Authorization": f"Bearer {person.token}"}
    # The handler's callback may still be finishing when the response arrives: wait for it.
    with LoopWatch(_wait_ident(server)) as watch:
        assert httpx.get(f"{server.url}/test-only/computes", headers=auth, timeout=30).json()[
            "blocked"
        ]
        wait_for(lambda: [b for b in watch.blocked if b.cpu_ms >= 100], 10, "the computing one")
    with LoopWatch(_wait_ident(server)) as watch:
        assert httpx.get(f"{server.url}/test-only/sleeps", headers=auth, timeout=30).json()[
            "blocked"
        ]
        wait_for(
            lambda: [b for b in watch.blocked if b.held_ms >= 300 and b.cpu_ms < 50],
            10,
            "the sleeping one",
        )
    with LoopWatch(_wait_ident(server)) as watch:
        assert not httpx.get(f"{server.url}/test-only/starved", headers=auth, timeout=30).json()[
            "blocked"
        ]
        wait_for(lambda: [b for b in watch.starved if b.held_ms >= 300], 10, "the starved one")
    assert [b for b in watch.blocked if b.held_ms >= 300] == []


def test_no_request_handler_blocks_the_event_loop(
    watched: tuple[BackgroundServer, Any],
    runtime: Any,
    openai_fake: ScriptBook,
    tmp_path: Path,
) -> None:
    server, _ = watched
    alice = make_person(runtime, "alice", "Alice Example", "alice@example.com")
    headers = {"Authorization": f"Bearer {alice.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        api = ApiClient(http, server.url, alice)
        # Warm the process first: imports and first-use caches are start-up, not requests.
        openai_fake.script(
            "task",
            Turn(text="looking", calls=[Call("run", {"command": "ls"})]),
            Turn(text="done", calls=[Call("finish", {"summary": "looked"})]),
        )
        repo = api.add_repo(make_repo(tmp_path, "proj"))["name"]
        first = api.create(repo, "task 0: warm the process")
        api.wait_status(first["id"], *_OVER, timeout=60)
        # FastAPI builds the OpenAPI schema once, at its first request (~80 ms).
        for path in (
            "/",
            "/new",
            "/stats",
            f"/sessions/{first['id']}",
            "/metrics",
            "/openapi.json",
        ):
            http.get(path)

        with LoopWatch(_wait_ident(server)) as watch:
            streams: list[threading.Thread] = []

            def follow(session_id: str) -> None:
                ws = server.url.replace("http://", "ws://")
                with connect(
                    f"{ws}/api/sessions/{session_id}/stream", additional_headers=headers
                ) as socket:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        event = socket.recv(timeout=30)
                        if '"prompt_finished"' in str(event):
                            return

            created = [api.create(repo, f"task {i}") for i in range(1, 7)]
            for session in created:
                thread = threading.Thread(target=follow, args=(session["id"],), daemon=True)
                thread.start()
                streams.append(thread)
            for path in (
                "/healthz",
                "/metrics",
                "/api/me",
                "/api/sessions",
                f"/api/sessions/{created[0]['id']}",
                f"/api/sessions/{created[0]['id']}/events",
                f"/api/sessions/{created[0]['id']}/prompts",
                f"/api/sessions/{first['id']}/diff",
                f"/api/sessions/{first['id']}/presence",
                "/api/repos",
                f"/api/repos/{repo}",
                "/api/images",
                f"/api/repos/{repo}/pulls",
                "/api/stats",
                "/",
                "/new",
                "/stats",
                f"/sessions/{created[0]['id']}",
                "/openapi.json",
            ):
                r = http.get(path)
                assert r.status_code == 200, (path, r.text)
            with http.stream("GET", f"/api/sessions/{first['id']}/events/stream") as sse:
                assert sse.status_code == 200
                next(sse.iter_lines())
            r = http.post(f"/api/repos/{repo}/warm")
            assert r.status_code == 202, r.text
            api.http.post(f"/api/sessions/{first['id']}/prompts", json={"text": "follow-up"})
            r = http.post(f"/api/sessions/{created[-1]['id']}/stop")
            assert r.status_code == 200, r.text
            for thread in streams:
                thread.join(40)
            for session in created:
                api.wait_status(session["id"], *_OVER, timeout=60)
    assert watch.callbacks > 100  # the watch saw the loop at work
    assert watch.blocked == [], "\n".join(
        f"{b.cpu_ms} ms CPU, held {b.held_ms} ms: {b.callback}"
        for b in watch.blocked + watch.starved
    )
