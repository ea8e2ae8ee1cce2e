"""The desktop of a session's sandbox, end to end: a real bubblewrap sandbox runs a real Xvfb,
window manager and x11vnc; the API's WebSocket speaks RFB to a client written here, and the
X server itself says whether a viewer's mouse reached it."""

from __future__ import annotations

import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from app.services.rfb import ProtocolError, ViewOnly
from tests.factories import ApiClient, Person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("Xvfb") and shutil.which("x11vnc") and shutil.which("bwrap")),
        reason="the desktop needs Xvfb, x11vnc and bwrap (apt-get install xvfb x11vnc bubblewrap)",
    ),
]


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    # The runner keeps the sandbox between prompts: that is when a desktop can be opened.
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        idle_seconds=600,
        desktop=True,
    )


@pytest.fixture
def idle_session(api: ApiClient, openai_fake: ScriptBook, tmp_path: Path) -> str:
    """A session whose prompt is done and whose runner holds its sandbox, waiting."""
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("look at it", Turn.tool("finish", summary="Looked."))
    session = api.create("proj", "look at it")
    api.wait_status(session["id"], "idle", timeout=60)
    return str(session["id"])


class Rfb:
    """Just enough of a VNC client: the handshake, a pointer event, an update request."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buf = b""

    def read(self, n: int, timeout: float = 20) -> bytes:
        while len(self.buf) < n:
            frame = self.ws.recv(timeout=timeout)
            assert isinstance(frame, bytes), frame
            self.buf += frame
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def handshake(self) -> tuple[int, int]:
        assert re.fullmatch(rb"RFB 003\.00\d\n", self.read(12))
        self.ws.send(b"RFB 003.008\n")
        count = self.read(1)[0]
        assert 1 in self.read(count)  # None: the socket is reachable only through this proxy
        self.ws.send(b"\x01")
        assert self.read(4) == b"\0\0\0\0"
        self.ws.send(b"\x01")  # shared
        width, height = struct.unpack(">HH", self.read(4))
        self.bpp = self.read(16)[0]
        self.read(struct.unpack(">I", self.read(4))[0])
        return width, height

    def point(self, x: int, y: int) -> None:
        self.ws.send(struct.pack(">BBHH", 5, 0, x, y))

    def round_trip(self) -> None:
        """Ask for one pixel and read an update: what was sent before has been handled."""
        self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1))
        while True:
            kind = self.read(1)[0]
            if kind == 2:  # bell
                continue
            if kind == 3:  # server cut text
                self.read(3)
                self.read(struct.unpack(">I", self.read(4))[0])
                continue
            assert kind == 0, kind
            self.read(1)
            for _ in range(struct.unpack(">H", self.read(2))[0]):
                _x, _y, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
                assert encoding == 0  # Raw: no other encoding was asked for
                self.read(w * h * self.bpp // 8)
            return


def _ws_url(server: BackgroundServer, session_id: str, **query: str) -> str:
    tail = "&".join(f"{k}={v}" for k, v in query.items())
    return server.url.replace("http://", "ws://") + f"/api/sessions/{session_id}/desktop?{tail}"


def _open_ws(server: BackgroundServer, session_id: str, person: Person, **query: str) -> Any:
    return connect(
        _ws_url(server, session_id, **query),
        additional_headers={"Authorization": f"Bearer {person.token}"},
        subprotocols=["binary"],  # type: ignore[list-item]
        max_size=None,
    )


def _refusal(server: BackgroundServer, session_id: str, headers: dict[str, str], **q: str) -> int:
    """The close code a refused desktop socket ends with."""
    url = _ws_url(server, session_id, **q)
    with connect(url, additional_headers=headers) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def _pointer(runtime: Any, session_id: str) -> tuple[int, int]:
    """Where the X server's pointer is, asked inside the session's own sandbox."""
    runner = next(r for r in runtime.dispatcher.runners.all() if r.session_id == session_id)
    sandbox = runner.sandbox.acquired.sandbox
    argv = ["x11vnc", "-display", ":99", "-query", "pointer_pos"]
    for _ in range(3):  # x11vnc's remote query gives up on a busy machine: ask again
        result = runtime.executor.submit(lambda: sandbox.exec(argv, timeout=30)).result(60)
        found = re.search(r"pointer_pos:(\d+),(\d+)", result.stdout + result.stderr)
        if found:
            break
    assert found, result
    return int(found[1]), int(found[2])


def test_desktop_speaks_rfb_and_is_view_only_until_a_participant_takes_control(
    api: ApiClient, server: BackgroundServer, runtime: Any, bob: Person, idle_session: str
) -> None:
    opened = api.http.post(f"/api/sessions/{idle_session}/desktop")
    assert opened.status_code == 200, opened.text
    body = opened.json()
    assert body["websocket"] == f"/api/sessions/{idle_session}/desktop"
    assert (body["width"], body["height"], body["display"]) == (1280, 800, ":99")
    assert body["can_control"] is True
    # Opening again returns the running desktop, not a second one.
    again = api.http.post(f"/api/sessions/{idle_session}/desktop").json()
    assert again["sandbox_id"] == body["sandbox_id"]
    assert again["started_at"] == body["started_at"]
    with api.as_(bob) as as_bob:
        assert as_bob.post(f"/api/sessions/{idle_session}/desktop").json()["can_control"] is False

    with _open_ws(server, idle_session, bob) as ws:
        watcher = Rfb(ws)
        assert watcher.handshake() == (1280, 800)
        start = _pointer(runtime, idle_session)
        watcher.point(start[0] // 2 + 7, start[1] // 2 + 3)
        watcher.round_trip()
        time.sleep(0.5)
        assert _pointer(runtime, idle_session) == start, "a view-only viewer moved the mouse"

        with _open_ws(server, idle_session, api.person, control="true") as ws2:
            driver = Rfb(ws2)
            driver.handshake()
            driver.point(123, 45)
            driver.round_trip()
            wait_for(lambda: _pointer(runtime, idle_session) == (123, 45), 10, "the pointer")
        # The watcher still watches after the other viewer left.
        watcher.round_trip()

    taken = [e for e in api.events(idle_session) if e["type"] == "desktop_control_taken"]
    assert [(e["login"], e["name"]) for e in taken] == [("alice", "Alice Example")]


def test_desktop_socket_refuses_strangers_other_sites_and_non_participants_in_control(
    api: ApiClient, server: BackgroundServer, bob: Person, idle_session: str
) -> None:
    assert api.http.post(f"/api/sessions/{idle_session}/desktop").status_code == 200
    alice = {"Authorization": f"Bearer {api.person.token}"}
    assert _refusal(server, idle_session, {}) == 4401
    assert _refusal(server, idle_session, {"Authorization": "Bearer not-a-token"}) == 4401
    assert _refusal(server, "no-such-session", alice) == 4404
    bobs = {"Authorization": f"Bearer {bob.token}"}
    assert _refusal(server, idle_session, bobs, control="true") == 4403
    # A page on another site is refused before anything is read, token or not.
    evil = {**alice, "Origin": "http://evil.example"}
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)),
        connect(_ws_url(server, idle_session), additional_headers=evil) as ws,
    ):
        ws.recv(timeout=10)
    assert not [e for e in api.events(idle_session) if e["type"] == "desktop_control_taken"]
    # The same checks on the POST.
    assert api.http.post("/api/sessions/no-such-session/desktop").status_code == 404
    with api.as_(bob) as other:
        other.headers.pop("Authorization")
        assert other.post(f"/api/sessions/{idle_session}/desktop").status_code == 401


def test_no_live_sandbox_is_a_clear_409_and_the_desktop_ends_with_the_sandbox(
    api: ApiClient, server: BackgroundServer, idle_session: str
) -> None:
    assert api.http.post(f"/api/sessions/{idle_session}/desktop").status_code == 200
    alice = {"Authorization": f"Bearer {api.person.token}"}
    with _open_ws(server, idle_session, api.person) as ws:
        Rfb(ws).handshake()
        assert api.http.post(f"/api/sessions/{idle_session}/stop").status_code == 200
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=30)
    refused = api.http.post(f"/api/sessions/{idle_session}/desktop")
    assert refused.status_code == 409
    assert "no live sandbox" in refused.json()["detail"]
    assert _refusal(server, idle_session, alice) == 4409


def test_view_only_filter_keeps_the_picture_and_drops_every_kind_of_input() -> None:
    f = ViewOnly()
    handshake = b"RFB 003.008\n" + b"\x01" + b"\x00"
    assert f.feed(handshake[:5]) == b""
    assert f.feed(handshake[5:]) == b"RFB 003.008\n\x01\x01"  # ClientInit forced to shared
    pixel_format = struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    encodings = b"\x02\x00" + struct.pack(">H", 2) + struct.pack(">ii", 0, -239)
    update = struct.pack(">BBHHHH", 3, 1, 0, 0, 10, 10)
    fence = b"\xf8\0\0\0" + struct.pack(">I", 0) + b"\x02ab"
    continuous = struct.pack(">BBHHHH", 150, 1, 0, 0, 10, 10)
    kept = [pixel_format, encodings, update, fence, continuous]
    key = struct.pack(">BBHI", 4, 1, 0, 0x61)
    pointer = struct.pack(">BBHH", 5, 1, 10, 10)
    cut = struct.pack(">BxxxI", 6, 5) + b"hello"
    extended_cut = struct.pack(">Bxxxi", 6, -4) + b"\0\0\0\1"
    qemu_key = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
    resize = struct.pack(">BxHHBx", 251, 800, 600, 1) + b"\0" * 16
    xvp = b"\xfa\x00\x01\x02"  # xvp shutdown
    dropped = [key, pointer, cut, extended_cut, qemu_key, resize, xvp]
    stream = b"".join(k + d for k, d in zip(kept + [b""] * 2, dropped, strict=True))
    # Byte by byte: messages split across frames are sized and filtered all the same.
    out = b"".join(f.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == b"".join(kept)
    assert f.dropped == 7
    with pytest.raises(ProtocolError):
        f.feed(b"\x07whatever")
    with pytest.raises(ProtocolError):
        ViewOnly().feed(b"RFB 003.003\n")
    with pytest.raises(ProtocolError):
        ViewOnly().feed(b"RFB 003.008\n\x02")  # VNC auth: never offered through this proxy
    malformed = [
        struct.pack(">BxxxI", 6, 64 << 20),  # a clipboard too large to buffer
        struct.pack(">BxxxBBBBHHHBBBxxx", 0, 12, 24, 0, 1, 255, 255, 255, 16, 8, 0),
        b"\x02\x00" + struct.pack(">H", 65) + b"\0" * 4 * 65,  # 65 encodings
        b"\xf8\0\0\0" + struct.pack(">I", 0) + b"\x41" + b"a" * 65,  # fence over 64 bytes
    ]
    for message in malformed:
        watcher = ViewOnly()
        watcher.feed(handshake)
        with pytest.raises(ProtocolError):
            watcher.feed(message)


def test_backends_and_modes_that_cannot_show_a_desktop_say_so(
    make_settings: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    import asyncio

    from app.errors import Conflict
    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from app.services.desktop import Desktops
    from tests.factories import make_person

    runtime = build_runtime(
        make_settings(
            model="openai:fake-model",
            openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
            openai_api_key="sk-test-fake-key-0123456789abcdef",
            idle_seconds=600,
            desktop=True,
            sandbox="fake",
        )
    )
    runtime.start()
    try:
        alice = make_person(runtime, "alice", "Alice Example", "alice@example.com")
        runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "proj"))))
        openai_fake.script("fake one", Turn.tool("finish", summary="Done."))
        session = runtime.sessions.create(alice.user, "proj", "fake one")
        wait_for(lambda: runtime.sessions.get(session.id).status == "idle", 60, "idle")
        desktops = Desktops(
            runtime.sessions,
            runtime.hub,
            runtime.executor,
            runtime.dispatcher.runners,
            enabled=True,
            idle_s=900,
        )
        with pytest.raises(Conflict, match="fake sandbox backend cannot show a desktop"):
            asyncio.run(desktops.open(session.id, alice.user))
        # Sessions run by Celery workers have their sandboxes elsewhere.
        remote = Desktops(
            runtime.sessions, runtime.hub, runtime.executor, None, enabled=True, idle_s=900
        )
        with pytest.raises(Conflict, match="runs on a worker"):
            asyncio.run(remote.open(session.id, alice.user))
    finally:
        runtime.close()


def test_only_novncs_client_library_is_served(server: BackgroundServer) -> None:
    import httpx

    from app.api.routes.desktop import NOVNC_DIR

    if not (NOVNC_DIR / "core" / "rfb.js").is_file():
        pytest.skip("novnc is not installed (apt-get install novnc)")
    rfb = httpx.get(f"{server.url}/novnc/core/rfb.js", timeout=30)
    assert rfb.status_code == 200 and "export default class RFB" in rfb.text
    assert rfb.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert (
        httpx.get(f"{server.url}/novnc/vendor/pako/lib/zlib/inflate.js", timeout=30).status_code
        == 200
    )
    # noVNC's own app connects wherever its address says: not on this origin.
    for path in ("/novnc/vnc.html", "/novnc/vnc_lite.html", "/novnc/app/ui.js"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 404, path
    assert httpx.get(f"{server.url}/novnc/core/../vnc.html", timeout=30).status_code == 404
