"""Resource rules of the programs a sandbox runs for people (its desktop, its IDE): off unless
the deployment enables them, stopped after NIGHTSHIFT_IDE_IDLE_SECONDS without a viewer."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.factories import ApiClient, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        idle_seconds=600,
        desktop=True,
        # Long enough for a loaded machine to connect after the POST, short enough to wait out.
        ide_idle_seconds=2.5,
    )


def _close_code(url: str, token: str) -> int:
    """The code a refused socket closes with; 0 when it is served."""
    headers = {"Authorization": f"Bearer {token}"}
    with connect(url, additional_headers=headers) as ws:
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code
        return 0


def test_the_desktop_and_ide_are_off_unless_enabled_and_say_which_setting(
    make_settings: Any, tmp_path: Path
) -> None:
    from app.main import create_app
    from app.runtime import build_runtime
    from tests.factories import make_person

    runtime = build_runtime(make_settings(sandbox="fake"))
    runtime.start()
    try:
        alice = make_person(runtime, "alice", "Alice Example", "alice@example.com")
        with (
            BackgroundServer(create_app(runtime=runtime)) as server,
            httpx.Client(
                timeout=30, base_url=server.url, headers={"Authorization": f"Bearer {alice.token}"}
            ) as http,
        ):
            me = http.get("/api/me").json()
            assert (me["desktop"], me["ide"]) == (False, False)
            for path, setting in (("desktop", "NIGHTSHIFT_DESKTOP=1"), ("ide", "NIGHTSHIFT_IDE=1")):
                refused = http.post(f"/api/sessions/any/{path}")
                assert refused.status_code == 404
                assert setting in refused.json()["detail"]
            ws = server.url.replace("http://", "ws://") + "/api/sessions/any/desktop"
            assert _close_code(ws, alice.token) == 4404
    finally:
        runtime.close()


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("x11vnc") and shutil.which("bwrap")),
    reason="the desktop needs Xvfb, x11vnc and bwrap",
)
def test_a_desktop_runs_while_watched_and_stops_after_the_idle_time_without_viewers(
    api: ApiClient, server: BackgroundServer, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("look", Turn.tool("finish", summary="Looked."))
    session_id = api.create("proj", "look")["id"]
    api.wait_status(session_id, "idle", timeout=60)
    assert api.http.get("/api/me").json()["desktop"] is True
    assert api.http.post(f"/api/sessions/{session_id}/desktop").status_code == 200
    url = server.url.replace("http://", "ws://") + f"/api/sessions/{session_id}/desktop"
    headers = {"Authorization": f"Bearer {api.person.token}"}
    with connect(url, additional_headers=headers) as ws:
        assert ws.recv(timeout=10)[:4] == b"RFB "  # type: ignore[index]
        time.sleep(4.0)  # well past the idle time, but watched all along
        ws.send(b"RFB 003.008\n")
        assert ws.recv(timeout=10)  # the security types: the desktop still serves
    time.sleep(4.5)  # a looking probe would be a viewer itself
    assert _close_code(url, api.person.token) == 4409
