"""What the web viewer needs from the server, over real HTTP and WebSocket: pages and static
files, sign-in cookies, presence (on the stream and by heartbeat) and the live sessions feed."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.factories import ApiClient, Person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

WEB = Path(__file__).resolve().parents[2] / "web"


@pytest.fixture
def session_id(api: ApiClient, openai_fake: ScriptBook, tmp_path: Path) -> str:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("web api", Turn.tool("finish", summary="ok"))
    session = api.create("proj", "web api test")
    api.wait_status(session["id"], "finished")
    return str(session["id"])


def _ws(server: BackgroundServer, path: str, person: Person) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + path
    return connect(url, additional_headers={"Authorization": f"Bearer {person.token}"})


def _frames_until(ws: ClientConnection, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not (frames and done(frames)):
        frames.append(json.loads(ws.recv(timeout=timeout)))
    return frames


# ---------------------------------------------------------------- pages and static files


@pytest.mark.parametrize("path", ["/", "/new", "/sessions/abc123", "/stats", "/signin"])
def test_pages_are_served_and_revalidated(server: BackgroundServer, path: str) -> None:
    r = httpx.get(server.url + path, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="/static/js/pages/' in r.text


def test_static_modules_resolve_and_are_served_as_javascript(server: BackgroundServer) -> None:
    modules = sorted(WEB.glob("js/**/*.js"))
    assert len(modules) >= 10
    for module in modules:
        for target in re.findall(r'from "(\.{1,2}/[^"]+)"', module.read_text()):
            assert (module.parent / target).resolve().is_file(), f"{module}: no {target}"
        r = httpx.get(f"{server.url}/static/{module.relative_to(WEB)}", timeout=30)
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == "text/javascript"
        assert r.headers["cache-control"] == "no-cache"
    for page in WEB.glob("*.html"):
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.read_text()):
            assert (WEB / ref.removeprefix("/static/")).is_file(), f"{page.name}: no {ref}"
    assert httpx.get(server.url + "/favicon.ico", timeout=30).status_code == 200


def test_no_third_party_code_in_web() -> None:
    for path in WEB.rglob("*"):
        if path.suffix in (".js", ".html"):
            text = path.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in text, f"{path} loads something from elsewhere"


# ---------------------------------------------------------------- sign-in


def test_sign_in_state_without_credentials_is_not_an_error(server: BackgroundServer) -> None:
    r = httpx.get(server.url + "/api/auth/state", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"user": None, "auth": "token", "github_login": None}


def test_token_sign_in_sets_a_browser_session_cookie(
    server: BackgroundServer, alice: Person
) -> None:
    own = {"Origin": server.url}
    with httpx.Client(timeout=30, base_url=server.url, headers=own) as browser:
        bad = browser.post("/api/auth/token", json={"token": "ns_nope"})
        assert bad.status_code == 401 and "invalid" in bad.json()["detail"]
        assert "set-cookie" not in bad.headers
        assert browser.post("/api/auth/token", json={}).status_code == 422
        evil = browser.post(
            "/api/auth/token",
            json={"token": alice.token},
            headers={"Origin": "https://evil.example"},
        )
        assert evil.status_code == 403 and "set-cookie" not in evil.headers

        ok = browser.post("/api/auth/token", json={"token": f"  {alice.token} "})
        assert ok.status_code == 200 and ok.json()["login"] == "alice"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith("nightshift_session=nsw_")  # a browser session, not the token
        assert alice.token not in cookie
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # http://127.0.0.1: a Secure cookie would never come back
        assert browser.get("/api/auth/state").json()["user"]["login"] == "alice"
        assert browser.get("/api/sessions").status_code == 200

        out = browser.post("/auth/logout")
        assert out.status_code == 303
        assert browser.get("/api/auth/state").json()["user"] is None
        assert browser.get("/api/sessions").status_code == 401


def test_a_revoked_cookie_is_dropped(server: BackgroundServer) -> None:
    r = httpx.get(
        server.url + "/api/auth/state", cookies={"nightshift_session": "ns_revoked"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["user"] is None
    assert 'nightshift_session=""' in r.headers["set-cookie"]


def test_github_button_shows_when_github_sign_in_is_configured(
    make_settings: Any, server: BackgroundServer
) -> None:
    from cryptography.fernet import Fernet
    from starlette.testclient import TestClient

    from app.main import create_app
    from app.runtime import build_runtime

    assert httpx.get(server.url + "/api/auth/state", timeout=30).json()["github_login"] is None
    settings = make_settings(
        github_client_id="Iv1.0123456789abcdef",
        github_client_secret="s3cret-s3cret-s3cret",
        secret_keys=Fernet.generate_key().decode(),
    )
    runtime = build_runtime(settings)
    try:
        with TestClient(create_app(runtime=runtime)) as client:
            assert client.get("/api/auth/state").json()["github_login"] == "/auth/github/login"
    finally:
        runtime.close()


# ---------------------------------------------------------------- presence


def test_stream_without_presence_sends_only_events(
    server: BackgroundServer, alice: Person, api: ApiClient, session_id: str
) -> None:
    last = api.session(session_id)["last_event_id"]
    with _ws(server, f"/api/sessions/{session_id}/stream?after=0", alice) as ws:
        frames = _frames_until(ws, lambda f: f[-1].get("id") == last)
        assert [f["id"] for f in frames] == list(range(1, last + 1))
        # An open stream counts as viewing, even when it does not ask for presence frames.
        viewers = api.http.get(f"/api/sessions/{session_id}/presence").json()["viewers"]
        assert [v["login"] for v in viewers] == ["alice"]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # no presence frame ever comes
    wait_for(
        lambda: api.http.get(f"/api/sessions/{session_id}/presence").json()["viewers"] == [],
        5,
        "the stream to leave",
    )


def test_presence_frames_tell_each_viewer_who_else_is_there(
    server: BackgroundServer, alice: Person, bob: Person, api: ApiClient, session_id: str
) -> None:
    last = api.session(session_id)["last_event_id"]
    path = f"/api/sessions/{session_id}/stream?after={last}&presence=true"

    def viewers(frames: list[dict[str, Any]]) -> list[str] | None:
        presence = [f for f in frames if f.get("type") == "presence"]
        return [v["login"] for v in presence[-1]["viewers"]] if presence else None

    with _ws(server, path, alice) as alice_ws:
        assert viewers(_frames_until(alice_ws, viewers)) == ["alice"]
        with _ws(server, path, bob) as bob_ws:
            frame = _frames_until(bob_ws, viewers)[-1]
            assert frame == {
                "type": "presence",
                "session_id": session_id,
                "viewers": frame["viewers"],
            }
            assert "id" not in frame
            assert viewers([frame]) == ["alice", "bob"]
            assert viewers(_frames_until(alice_ws, lambda f: viewers(f) == ["alice", "bob"]))
            alice_ws.send('{"type":"ping"}')  # keepalives from the page are fine
        assert viewers(_frames_until(alice_ws, lambda f: viewers(f) == ["alice"])) == ["alice"]
    # Presence is never an event.
    assert api.session(session_id)["last_event_id"] == last
    assert all(e["type"] != "presence" for e in api.events(session_id))


def test_stream_refuses_unknown_sessions_and_strangers(
    server: BackgroundServer, alice: Person
) -> None:
    from websockets.exceptions import ConnectionClosed

    base = server.url.replace("http://", "ws://") + "/api/sessions/nope/stream?presence=true"
    for headers, code in (({"Authorization": f"Bearer {alice.token}"}, 4404), ({}, 4401)):
        with (
            connect(base, additional_headers=headers) as ws,
            pytest.raises(ConnectionClosed) as refused,
        ):
            ws.recv(timeout=10)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == code


def test_heartbeat_presence_for_clients_off_the_websocket(
    api: ApiClient, bob: Person, session_id: str
) -> None:
    base = f"/api/sessions/{session_id}/presence"
    r = api.http.post(base, json={"client_id": "tab-alice-1"})
    assert r.status_code == 200
    assert r.json()["type"] == "presence" and [v["login"] for v in r.json()["viewers"]] == ["alice"]
    with api.as_(bob) as as_bob:
        both = as_bob.post(base, json={"client_id": "tab-bob-01"}).json()["viewers"]
        assert [v["login"] for v in both] == ["alice", "bob"]
        assert as_bob.delete(f"{base}/tab-bob-01").status_code == 204
    assert [v["login"] for v in api.http.get(base).json()["viewers"]] == ["alice"]
    for bad in ({"client_id": "short"}, {"client_id": "has spaces in it"}, {}, {"x": 1}):
        assert api.http.post(base, json=bad).status_code == 422
    assert (
        api.http.post("/api/sessions/nope/presence", json={"client_id": "tab-alice-1"}).status_code
        == 404
    )
    assert (
        httpx.post(api.base_url + base, json={"client_id": "tab-alice-1"}, timeout=30).status_code
        == 401
    )


# ---------------------------------------------------------------- live sessions feed


def test_changes_feed_sends_each_session_as_it_changes(
    api: ApiClient, server: BackgroundServer, alice: Person, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    gate = threading.Event()
    openai_fake.script("feed", Turn(text="Working.", gate=gate))
    received: list[dict[str, Any]] = []
    opened = threading.Event()

    def read() -> None:
        headers = {"Authorization": f"Bearer {alice.token}"}
        with httpx.stream(
            "GET", server.url + "/api/sessions/changes", headers=headers, timeout=30
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            opened.set()
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "session":
                    received.append(json.loads(line[6:]))
                    if received[-1]["status"] == "finished":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10)
    session = api.create("proj", "feed me")
    wait_for(lambda: any(s["status"] == "running" for s in received), 15, "running")
    gate.set()
    reader.join(20)
    assert not reader.is_alive()
    assert {s["id"] for s in received} == {session["id"]}
    statuses = [s["status"] for s in received]
    # A frame carries the session as it is when sent: a runner quick to start may have moved
    # it past `queued` by the time the creation's frame reads it.
    assert statuses[0] in ("queued", "starting", "running") and statuses[-1] == "finished"
    assert "running" in statuses
    assert received[0]["author"]["login"] == "alice" and received[0]["repo"] == "proj"
    assert httpx.get(server.url + "/api/sessions/changes", timeout=30).status_code == 401
