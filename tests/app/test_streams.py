"""Live events: WebSocket and SSE streams resume from an id with nothing missing or doubled."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import websockets

from tests.factories import ApiClient, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer


async def _ws_collect(url: str, until: int) -> list[dict]:
    """Read frames until an event with id >= until arrives."""
    out = []
    async with websockets.connect(url) as ws:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
            out.append(frame)
            if frame.get("id", 0) >= until:
                return out


def test_websocket_streams_stored_then_live_events_and_resumes(
    api: ApiClient, server: BackgroundServer, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    gate = threading.Event()
    openai_fake.script(
        "stream me",
        Turn.tool("list_files", "Let me look at the files in this repository first.", path="."),
        Turn(text="Waiting at the gate.", gate=gate),
    )
    session = api.create("proj", "stream me")
    sid = session["id"]
    wait_for(
        lambda: any(e["type"] == "tool_result" for e in api.events(sid)), 20, "first tool result"
    )
    stored = api.events(sid)
    ws_url = (
        server.url.replace("http", "ws") + f"/api/sessions/{sid}/stream?token={api.person.token}"
    )

    async def scenario() -> tuple[list[dict], list[dict]]:
        # First client: everything stored so far, then live events once the gate opens.
        first = asyncio.create_task(_ws_collect(ws_url + "&after=0", 10_000))
        await asyncio.sleep(0.3)
        gate.set()
        done = await asyncio.to_thread(api.wait_status, sid, "finished", "failed")
        assert done["status"] == "finished"
        last = api.events(sid)[-1]["id"]
        first.cancel()
        # A client resuming from the middle gets exactly what follows.
        middle = stored[len(stored) // 2]["id"]
        resumed = await _ws_collect(ws_url + f"&after={middle}", last)
        whole = await _ws_collect(ws_url + "&after=0", last)
        return resumed, whole

    resumed, whole = asyncio.run(scenario())
    all_events = api.events(sid)
    ids = [e["id"] for e in all_events]
    assert ids == list(range(1, len(ids) + 1))  # per-session monotonic ids
    assert [e["id"] for e in whole] == ids
    middle = stored[len(stored) // 2]["id"]
    assert [e["id"] for e in resumed] == [i for i in ids if i > middle]
    assert whole == all_events  # frames are the stored events, byte for byte in JSON


def test_websocket_refuses_bad_token_and_unknown_session(
    api: ApiClient, server: BackgroundServer
) -> None:
    base = server.url.replace("http", "ws")

    async def attempt(url: str) -> int:
        try:
            async with websockets.connect(url) as ws:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        return 0

    assert asyncio.run(attempt(f"{base}/api/sessions/nope/stream?token={api.person.token}")) == 4404
    assert asyncio.run(attempt(f"{base}/api/sessions/nope/stream?token=ns_bad")) == 4401


def test_sse_stream_honours_last_event_id(
    api: ApiClient, server: BackgroundServer, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script(
        "sse", Turn.tool("write_file", path="s.txt", content="s"), Turn.tool("finish", summary="ok")
    )
    session = api.create("proj", "sse please")
    api.wait_status(session["id"], "finished", "failed")
    events = api.events(session["id"])
    start = events[3]["id"]
    received: list[int] = []
    with (
        httpx.Client(base_url=server.url, timeout=20) as http,
        http.stream(
            "GET",
            f"/api/sessions/{session['id']}/events/stream",
            headers={"Authorization": f"Bearer {api.person.token}", "Last-Event-ID": str(start)},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                received.append(int(line[4:]))
                if received[-1] == events[-1]["id"]:
                    break
    assert received == [e["id"] for e in events if e["id"] > start]


@pytest.mark.parametrize("path", ["/events/stream", "/events"])
def test_streams_need_auth(server: BackgroundServer, api: ApiClient, path: str) -> None:
    with httpx.Client(timeout=30, base_url=server.url) as anon:
        assert anon.get(f"/api/sessions/x{path}").status_code == 401
