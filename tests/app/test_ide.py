"""VS Code in the browser, end to end around a stand-in: a real bubblewrap sandbox runs
`tests/fakes/ide_standin.py` where code-server would run, and the tests go through the API and
the IDE origin's proxy exactly as a browser does (ticket, cookie, HTTP, WebSocket)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from app.errors import Forbidden
from tests.factories import ApiClient, Person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("bwrap"), reason="the IDE needs bwrap (bubblewrap)"),
]
STANDIN = Path(__file__).parents[1] / "fakes" / "ide_standin.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ide_port() -> int:
    return _free_port()


@pytest.fixture
def ide_command() -> str:
    return "python3 /workspace/ide_standin.py"


@pytest.fixture
def ide_idle_seconds() -> float:
    return 900.0


@pytest.fixture
def ide_host() -> str:
    """The IDE origin's host; `{session}.localhost` gives each session a host of its own."""
    return "127.0.0.1"


@pytest.fixture
def settings(
    make_settings: Any,
    openai_fake: ScriptBook,
    ide_port: int,
    ide_command: str,
    ide_idle_seconds: float,
    ide_host: str,
) -> Any:
    return make_settings(
        ide_idle_seconds=ide_idle_seconds,
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        idle_seconds=600,
        ide=True,
        ide_command=ide_command,
        ide_origin=f"http://{ide_host}:{ide_port}",
    )


@pytest.fixture
def ide(server: BackgroundServer, settings: Any, ide_port: int) -> Iterator[BackgroundServer]:
    from app.api.ide_proxy import create_ide_app

    app = create_ide_app(server.server.config.app, settings.ide_origin)
    with BackgroundServer(app, port=ide_port) as srv:
        yield srv


@pytest.fixture
def idle_session(api: ApiClient, openai_fake: ScriptBook, tmp_path: Path) -> str:
    """A session whose prompt is done and whose runner holds its sandbox; its repository
    carries the stand-in, so the sandbox can run it."""
    files = {"README.md": "# proj\n", "ide_standin.py": STANDIN.read_text()}
    api.add_repo(make_repo(tmp_path, "proj", files))
    openai_fake.script("look at it", Turn.tool("finish", summary="Looked."))
    session = api.create("proj", "look at it")
    api.wait_status(session["id"], "idle", timeout=60)
    return str(session["id"])


def _open(client: httpx.Client, session_id: str) -> tuple[str, str]:
    """Open the IDE as `client`'s person: the ticket URL, and the cookie it is exchanged for."""
    opened = client.post(f"/api/sessions/{session_id}/ide")
    assert opened.status_code == 200, opened.text
    url = opened.json()["url"]
    redeemed = httpx.get(url, timeout=30)
    assert redeemed.status_code == 303, redeemed.text
    assert redeemed.headers["location"] == "./"
    return url, redeemed.cookies["nightshift_ide"]


def test_ide_opens_once_per_ticket_behind_a_session_scoped_cookie(
    api: ApiClient, ide: BackgroundServer, bob: Person, idle_session: str
) -> None:
    prefix = f"{ide.url}/api/sessions/{idle_session}/ide/"
    for path in ("", "headers", "static/out/workbench.js", "ws"):
        refused = httpx.get(prefix + path, timeout=30)
        assert refused.status_code == 403, (path, refused.text)
        assert "no access" in refused.json()["detail"]
    with api.as_(bob) as as_bob:
        opened = as_bob.post(f"/api/sessions/{idle_session}/ide")
    assert opened.status_code == 200, opened.text
    body = opened.json()
    assert body["url"].startswith(prefix + "?ticket=")
    assert body["expires_in"] == 60
    redeemed = httpx.get(body["url"], timeout=30)
    assert redeemed.status_code == 303
    cookie = redeemed.headers["set-cookie"].lower()
    assert "httponly" in cookie and f"path=/api/sessions/{idle_session}/ide/" in cookie
    assert "samesite=lax" in cookie
    assert redeemed.headers["referrer-policy"] == "no-referrer"
    # The ticket works once.
    again = httpx.get(body["url"], timeout=30)
    assert again.status_code == 403 and "used, expired" in again.json()["detail"]
    token = redeemed.cookies["nightshift_ide"]
    page = httpx.get(prefix, cookies={"nightshift_ide": token}, timeout=30)
    assert page.status_code == 200 and "stand-in workbench" in page.text
    # The pass is for this session only; a made-up one is nobody's.
    other = f"{ide.url}/api/sessions/other-session/ide/"
    assert httpx.get(other, cookies={"nightshift_ide": token}, timeout=30).status_code == 403
    assert httpx.get(prefix, cookies={"nightshift_ide": "forged"}, timeout=30).status_code == 403
    # Opening again finds the running IDE, with a new ticket.
    reopened = api.http.post(f"/api/sessions/{idle_session}/ide").json()
    assert reopened["sandbox_id"] == body["sandbox_id"]
    assert reopened["started_at"] == body["started_at"]
    assert reopened["url"] != body["url"]


def test_tickets_expire_and_belong_to_one_session(runtime: Any, alice: Person) -> None:
    ides = runtime.ides
    ticket = ides.issue("s1", alice.user)
    with pytest.raises(Forbidden):
        ides.redeem("s2", ticket)
    with pytest.raises(Forbidden):
        ides.redeem("s1", ticket)  # a ticket tried on another session is spent
    fresh = ides.issue("s1", alice.user)
    token, granted = ides.redeem("s1", fresh)
    assert granted.user.login == "alice" and len(token) > 30
    expired = type(ides)(
        ides.sessions,
        ides.hub,
        ides.executor,
        ides.runners,
        enabled=True,
        command="code-server",
        origin=ides.origin,
        idle_s=60,
        ticket_ttl_s=-1.0,
    )
    stale = expired.issue("s1", alice.user)
    with pytest.raises(Forbidden, match="expired"):
        expired.redeem("s1", stale)


def test_the_proxy_strips_our_credentials_both_ways_over_http_and_websockets(
    api: ApiClient, ide: BackgroundServer, idle_session: str, settings: Any
) -> None:
    _, token = _open(api.http, idle_session)
    prefix = f"{ide.url}/api/sessions/{idle_session}/ide/"
    ours = f"nightshift_ide={token}; nightshift_session=signed-in; theirs=1"
    secrets = {"Cookie": ours, "Authorization": f"Bearer {api.person.token}"}
    seen = httpx.get(prefix + "headers?x=1", headers=secrets, timeout=30).json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert seen["path"] == "/headers?x=1"
    assert "authorization" not in headers
    assert headers["cookie"] == "theirs=1"
    assert api.person.token not in json.dumps(seen) and token not in json.dumps(seen)
    # Paths reach code-server as the browser encoded them (a file name with a space, a `%`).
    named = httpx.get(
        prefix + "headers/a%20b%25c.txt", cookies={"nightshift_ide": token}, timeout=30
    )
    assert named.json()["path"] == "/headers/a%20b%25c.txt"
    # code-server cannot set the proxy's cookie (nor the API's).
    answered = httpx.get(prefix + "set-cookies", cookies={"nightshift_ide": token}, timeout=30)
    assert answered.headers.get_list("set-cookie") == ["standin_pref=dark; Path=/"]
    # Its pages may reach only the IDE origin (not another site, through the viewer's browser).
    policy = answered.headers["content-security-policy"]
    assert "connect-src 'self';" in policy and "default-src 'self';" in policy

    ws_url = prefix.replace("http://", "ws://") + "ws?q=1"
    with connect(ws_url, additional_headers=secrets) as ws:
        shown = json.loads(ws.recv(timeout=10))
        upstream = {k.lower(): v for k, v in shown["headers"]}
        assert shown["path"] == "/ws?q=1"
        assert "authorization" not in upstream and upstream.get("cookie") == "theirs=1"
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo:hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"\x00\x01"
    # Without the cookie, every socket is refused with 4403.
    for headers in ({}, {"Cookie": "nightshift_ide=forged"}):
        with (
            connect(ws_url, additional_headers=headers) as ws,
            pytest.raises(ConnectionClosed) as c,
        ):
            ws.recv(timeout=10)
        assert c.value.rcvd is not None and c.value.rcvd.code == 4403
    # A page on another site cannot open it either, cookie or not.
    evil = {"Cookie": f"nightshift_ide={token}", "Origin": "http://evil.example"}
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)),
        connect(ws_url, additional_headers=evil) as ws,
    ):
        ws.recv(timeout=10)


def test_the_api_refuses_the_ide_origin(
    api: ApiClient, ide: BackgroundServer, idle_session: str, settings: Any
) -> None:
    origin = {"Origin": settings.ide_origin}
    assert api.http.get("/api/me", headers=origin).status_code == 403
    queued = api.http.post(
        f"/api/sessions/{idle_session}/prompts", json={"text": "from the IDE page"}, headers=origin
    )
    assert queued.status_code == 403
    assert "IDE" in queued.json()["detail"]
    assert not [e for e in api.events(idle_session) if e["type"] == "prompt_queued"][1:]
    ws = api.base_url.replace("http://", "ws://") + f"/api/sessions/{idle_session}/stream"
    with (
        pytest.raises((InvalidStatus, ConnectionClosed)),
        connect(ws, additional_headers=origin) as c,
    ):
        c.recv(timeout=10)


def test_edits_in_the_ide_are_an_event_and_co_author_the_next_commit(
    api: ApiClient, ide: BackgroundServer, bob: Person, idle_session: str, openai_fake: ScriptBook
) -> None:
    with api.as_(bob) as as_bob:
        _, token = _open(as_bob, idle_session)
    written = httpx.post(
        f"{ide.url}/api/sessions/{idle_session}/ide/write",
        params={"path": "notes.txt"},
        content=b"written in the IDE\n",
        cookies={"nightshift_ide": token},
        timeout=30,
    )
    assert written.status_code == 200, written.text
    edited = wait_for(
        lambda: [e for e in api.events(idle_session) if e["type"] == "ide_files_edited"],
        30,
        "the IDE edit to be recorded",
    )
    assert edited[0]["author"]["login"] == "bob"
    assert edited[0]["files"] == ["notes.txt"]

    openai_fake.script("tidy up", Turn.tool("finish", summary="Tidied."))
    api.http.post(f"/api/sessions/{idle_session}/prompts", json={"text": "tidy up"})
    commit = wait_for(
        lambda: [e for e in api.events(idle_session) if e["type"] == "commit_created"],
        60,
        "the commit",
    )[0]
    assert commit["author"] == "Alice Example <alice@example.com>"
    assert commit["co_authors"] == ["Co-authored-by: Bob Example <bob@example.com>"]
    wait_for(
        lambda: [e for e in api.events(idle_session) if e["type"] == "branch_pushed"], 60, "push"
    )
    diff = api.http.get(f"/api/sessions/{idle_session}/diff")
    assert diff.status_code == 200 and "written in the IDE" in diff.text


def test_a_finished_session_has_no_ide_to_open_and_its_ide_stops_with_it(
    api: ApiClient, ide: BackgroundServer, idle_session: str
) -> None:
    _, token = _open(api.http, idle_session)
    prefix = f"{ide.url}/api/sessions/{idle_session}/ide/"
    assert httpx.get(prefix, cookies={"nightshift_ide": token}, timeout=30).status_code == 200
    assert api.http.post(f"/api/sessions/{idle_session}/stop").status_code == 200
    api.wait_status(idle_session, "stopped", timeout=60)
    refused = api.http.post(f"/api/sessions/{idle_session}/ide")
    assert refused.status_code == 409
    assert "stopped" in refused.json()["detail"] and "sandbox is gone" in refused.json()["detail"]
    gone = wait_for(
        lambda: (
            (r := httpx.get(prefix, cookies={"nightshift_ide": token}, timeout=30)).status_code
            == 409
            and r
        ),
        30,
        "the IDE to stop with the session",
    )
    assert "no IDE running" in gone.json()["detail"]


@pytest.mark.parametrize("ide_command", ["code-server-not-installed-here"])
def test_an_ide_that_is_not_installed_answers_503_naming_it(
    api: ApiClient, idle_session: str
) -> None:
    refused = api.http.post(f"/api/sessions/{idle_session}/ide")
    assert refused.status_code == 503, refused.text
    detail = refused.json()["detail"]
    assert "code-server-not-installed-here is not installed" in detail
    assert "make ide" in detail


def _answers(runtime: Any, session_id: str) -> bool:
    """Whether the IDE's socket in the session's sandbox answers (asked without going through
    the proxy, which would count as a viewer)."""
    from images.sandboxes.desktop import open_socket
    from images.sandboxes.ide import SOCKET_DIR, SOCKET_NAME

    runner = next(r for r in runtime.dispatcher.runners.all() if r.session_id == session_id)
    try:
        open_socket(runner.sandbox.acquired.sandbox.tmp, SOCKET_DIR, SOCKET_NAME).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("ide_idle_seconds", [1.0])
def test_the_ide_runs_while_used_and_stops_after_the_idle_time_without_viewers(
    api: ApiClient, ide: BackgroundServer, runtime: Any, idle_session: str
) -> None:
    _, token = _open(api.http, idle_session)
    ws_url = f"{ide.url}/api/sessions/{idle_session}/ide/ws".replace("http://", "ws://")
    with connect(ws_url, additional_headers={"Cookie": f"nightshift_ide={token}"}) as ws:
        ws.recv(timeout=10)
        time.sleep(4.5)  # past the idle time and a check, but watched all along
        ws.send("still here")
        assert ws.recv(timeout=10) == "echo:still here"
    wait_for(lambda: not _answers(runtime, idle_session), 30, "the unwatched IDE to stop")
    gone = httpx.get(
        ws_url.replace("ws://", "http://")[:-2], cookies={"nightshift_ide": token}, timeout=30
    )
    assert gone.status_code == 409 and "no IDE running" in gone.json()["detail"]


@pytest.mark.parametrize("ide_host", ["{session}.localhost"])
def test_each_session_can_have_an_ide_origin_of_its_own(
    api: ApiClient, ide: BackgroundServer, idle_session: str, settings: Any
) -> None:
    own = f"{idle_session}.localhost:{ide.port}"
    opened = api.http.post(f"/api/sessions/{idle_session}/ide")
    assert opened.status_code == 200, opened.text
    url = opened.json()["url"]
    assert url.startswith(f"http://{own}/api/sessions/{idle_session}/ide/?ticket=")
    local = url.replace(own, f"127.0.0.1:{ide.port}")  # *.localhost is loopback to browsers
    # The ticket is refused on another session's host (and not spent there).
    elsewhere = httpx.get(
        local, headers={"Host": f"other0session.localhost:{ide.port}"}, timeout=30
    )
    assert elsewhere.status_code == 403 and "its own address" in elsewhere.json()["detail"]
    redeemed = httpx.get(local, headers={"Host": own}, timeout=30)
    assert redeemed.status_code == 303, redeemed.text
    token = redeemed.cookies["nightshift_ide"]
    prefix = f"http://127.0.0.1:{ide.port}/api/sessions/{idle_session}/ide/"
    page = httpx.get(prefix, headers={"Host": own, "Cookie": f"nightshift_ide={token}"}, timeout=30)
    assert page.status_code == 200 and "stand-in workbench" in page.text
    moved = httpx.get(
        prefix,
        headers={
            "Host": f"other0session.localhost:{ide.port}",
            "Cookie": f"nightshift_ide={token}",
        },
        timeout=30,
    )
    assert moved.status_code == 403
    ws = f"ws://other0session.localhost:{ide.port}/api/sessions/{idle_session}/ide/ws"
    sock = socket.create_connection(("127.0.0.1", ide.port))
    cookie = {"Cookie": f"nightshift_ide={token}"}
    with (
        connect(ws, sock=sock, additional_headers=cookie) as c,
        pytest.raises(ConnectionClosed) as closed,
    ):
        c.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    # The API refuses pages of every session's IDE host.
    refused = api.http.get("/api/me", headers={"Origin": f"http://another.localhost:{ide.port}"})
    assert refused.status_code == 403
