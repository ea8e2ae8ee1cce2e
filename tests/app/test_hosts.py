"""A local server answers only to its own names, and pages on other sites cannot write to it or
read its streams: DNS rebinding and cross-site WebSockets, cookie or not."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.factories import make_person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

EVIL = "http://evil.test"


@pytest.fixture
def local(make_settings: Any, openai_fake: ScriptBook, tmp_path: Path) -> Iterator[Any]:
    """`make run`: NIGHTSHIFT_AUTH=local on 127.0.0.1, with one finished session on a repo."""
    from app.main import create_app
    from app.runtime import build_runtime

    runtime = build_runtime(
        make_settings(
            auth="local",
            model="openai:fake-model",
            openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
            openai_api_key="sk-test-fake-key-0123456789abcdef",
        )
    )
    runtime.start()
    openai_fake.script("hosts", Turn.tool("finish", summary="done"))
    with BackgroundServer(create_app(runtime=runtime)) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert (
                http.post("/api/repos", json={"url": str(make_repo(tmp_path))}).status_code == 201
            )
            session = http.post("/api/sessions", json={"repo": "proj", "prompt": "hosts"}).json()
            for _ in range(600):
                if http.get(f"/api/sessions/{session['id']}").json()["status"] == "finished":
                    break
                __import__("time").sleep(0.05)
        server.session_id = session["id"]  # type: ignore[attr-defined]
        yield server
    runtime.close()


def test_a_rebinding_host_is_refused_and_own_names_are_served(local: BackgroundServer) -> None:
    port = local.port
    with httpx.Client(base_url=local.url, timeout=10) as http:
        r = http.get("/api/sessions", headers={"Host": f"rebind.attacker.test:{port}"})
        assert r.status_code == 400 and "rebind" not in r.text
        assert "total" not in r.text
        r = http.post(
            "/api/sessions",
            json={"repo": "proj", "prompt": "from a rebound page"},
            headers={"Host": f"rebind.attacker.test:{port}"},
        )
        assert r.status_code == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
            assert http.get("/api/sessions", headers={"Host": host}).status_code == 200, host
        assert http.get("/api/sessions").json()["total"] == 1


def _stream(server: BackgroundServer, host: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Connect to the session's stream, naming `host` in the URL but dialling the server."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    url = f"ws://{host}:{server.port}/api/sessions/{server.session_id}/stream?after=0"  # type: ignore[attr-defined]
    with connect(url, sock=sock, **kwargs) as ws:
        return [json.loads(ws.recv(timeout=10)) for _ in range(2)]


def test_cross_site_websockets_without_a_cookie_get_nothing(local: BackgroundServer) -> None:
    for origin in (EVIL, f"http://evil.test:{local.port}", "null"):
        with pytest.raises(InvalidStatus) as refused:
            _stream(local, "127.0.0.1", origin=origin)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, origin
    with pytest.raises(InvalidStatus) as refused:
        _stream(local, "rebind.attacker.test", origin=f"http://rebind.attacker.test:{local.port}")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 400
    # The viewer's own page, and clients that send no Origin (the CLI), still stream.
    own = _stream(local, "127.0.0.1", origin=f"http://127.0.0.1:{local.port}")  # type: ignore[arg-type]
    assert [f["id"] for f in own] == [1, 2]
    assert [f["id"] for f in _stream(local, "localhost")] == [1, 2]


def test_a_page_on_another_local_port_is_another_site(local: BackgroundServer) -> None:
    # Another server on this machine (a dev server on :3000) serves pages under our host names.
    for other in (
        f"http://localhost:{local.port + 1}",
        "http://127.0.0.1:3000",
        "http://localhost",
    ):
        with pytest.raises(InvalidStatus) as refused:
            _stream(local, "127.0.0.1", origin=other)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, other
        with httpx.Client(base_url=local.url, timeout=10) as http:
            r = http.post(
                f"/api/sessions/{local.session_id}/stop",  # type: ignore[attr-defined]
                headers={"Origin": other},
            )
            assert r.status_code == 403, other
    own = _stream(local, "localhost", origin=f"http://localhost:{local.port}")  # type: ignore[arg-type]
    assert [f["id"] for f in own] == [1, 2]


def test_state_changing_requests_check_origin_cookie_or_token_or_neither(
    local: BackgroundServer,
) -> None:
    body = {"repo": "proj", "prompt": "cross-site"}
    with httpx.Client(base_url=local.url, timeout=10) as http:
        for origin in (EVIL, "null", "file://", "chrome-extension://abc"):
            r = http.post("/api/sessions", json=body, headers={"Origin": origin})
            assert r.status_code == 403 and "cross-site" in r.json()["detail"], origin
        # A read from another origin is not refused here (the browser keeps it from the page).
        assert http.get("/api/sessions", headers={"Origin": EVIL}).status_code == 200
        assert http.get("/api/sessions").json()["total"] == 1
        own = http.post(
            "/api/sessions", json=body, headers={"Origin": f"http://127.0.0.1:{local.port}"}
        )
        assert own.status_code == 201, own.text
        # Webhooks and the CLI send no Origin: not refused by this check.
        assert http.post("/github/webhooks", content=b"{}").status_code != 403


def test_token_callers_are_checked_too(server: BackgroundServer, runtime: Any) -> None:
    token = make_person(runtime, "tess", "Tess", "tess@example.com").token
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as http:
        r = http.post("/api/sessions/abc/stop", headers={"Origin": EVIL})
        assert r.status_code == 403
        assert http.post("/api/sessions/abc/stop").status_code == 404


def test_public_url_and_allowed_hosts_are_own_names(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from app.api.hosts import server_names
    from app.main import create_app
    from app.runtime import build_runtime

    settings = make_settings(
        public_url="https://ns.example.test/",
        allowed_hosts="Extra.example.test, *.corp.test",
    )
    runtime = build_runtime(settings)
    try:
        client = TestClient(create_app(runtime=runtime), base_url="https://ns.example.test")
        for host in ("ns.example.test", "extra.example.test", "a.b.corp.test"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
            r = client.post(
                "/api/sessions/abc/stop", headers={"Host": host, "Origin": f"https://{host}"}
            )
            assert r.status_code == 401, host  # past both checks, then asked who it is
        assert client.get("/healthz", headers={"Host": "corp.test"}).status_code == 400
    finally:
        runtime.close()
    wide = make_settings(host="0.0.0.0", control_url="http://api:8000", allowed_hosts="")
    names = server_names(wide)
    assert {"localhost", "127.0.0.1", "[::1]", "api"} <= set(names) and "0.0.0.0" not in names
    assert server_names(make_settings(host="::1", allowed_hosts="")) == [
        "localhost",
        "[::1]",
        "127.0.0.1",
    ]


def test_allowed_hosts_must_be_host_names(make_settings: Any) -> None:
    for bad in ("http://ns.example.test", "ns.example.test/x", "a*.example.test", "*example"):
        with pytest.raises(ValueError, match="NIGHTSHIFT_ALLOWED_HOSTS"):
            make_settings(allowed_hosts=bad)
