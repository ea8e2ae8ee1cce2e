"""Inputs that once reached a 500 (found by tests/app/test_api_fuzz.py or beside it): each is
now a 4xx with a message, or is read as the harmless value it stands for, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.factories import ApiClient, Person, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.server import BackgroundServer

HUGE = str(10**30)


@pytest.fixture
def finished(api: ApiClient, openai_fake: ScriptBook, tmp_path: Path) -> str:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script("bad input", Turn.tool("finish", summary="ok"))
    session = api.create("proj", "bad input")
    api.wait_status(session["id"], "finished")
    return str(session["id"])


def _refused(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    assert any(field in d["loc"] for d in r.json()["detail"]), r.text


def test_a_session_list_offset_beyond_any_row_is_422(api: ApiClient) -> None:
    # Was: OverflowError: Python int too large to convert to SQLite INTEGER.
    _refused(api.http.get("/api/sessions", params={"offset": HUGE}), "offset")


def test_a_session_list_status_outside_the_statuses_is_422_naming_them(api: ApiClient) -> None:
    r = api.http.get("/api/sessions", params={"status": "bogus"})
    _refused(r, "status")
    assert "'finished'" in r.text and "'stopped'" in r.text, r.text
    assert api.http.get("/api/sessions", params={"status": "stopped"}).status_code == 200


def test_events_after_an_id_beyond_any_row_is_422(api: ApiClient, finished: str) -> None:
    _refused(api.http.get(f"/api/sessions/{finished}/events", params={"after": HUGE}), "after")
    _refused(
        api.http.get(f"/api/sessions/{finished}/events/stream", params={"after": HUGE}), "after"
    )


def test_a_pull_request_number_beyond_any_row_is_422(api: ApiClient, tmp_path: Path) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    _refused(api.http.get(f"/api/repos/proj/pulls/{HUGE}"), "number")
    assert api.http.get("/api/repos/proj/pulls/7").status_code == 404


@pytest.mark.parametrize("last_event_id", [HUGE.encode(), "²".encode("latin-1")])
def test_sse_resumes_from_after_when_last_event_id_is_no_usable_id(
    server: BackgroundServer, alice: Person, api: ApiClient, finished: str, last_event_id: bytes
) -> None:
    # Headers arrive as latin-1: "²".isdigit() is true but int("²") raises; a 30-digit id
    # overflowed SQLite.
    headers = {b"Authorization": f"Bearer {alice.token}".encode(), b"Last-Event-ID": last_event_id}
    url = f"{server.url}/api/sessions/{finished}/events/stream?after=0"
    with httpx.stream("GET", url, headers=headers, timeout=10) as r:
        assert r.status_code == 200
        seen = ""
        for chunk in r.iter_text():
            seen += chunk
            if "id: 1\n" in seen:
                break
    assert "id: 1\n" in seen


def test_websocket_after_beyond_any_row_waits_for_new_events(
    server: BackgroundServer, alice: Person, finished: str
) -> None:
    from websockets.exceptions import ConnectionClosed

    url = server.url.replace("http://", "ws://") + f"/api/sessions/{finished}/stream?after={HUGE}"
    with connect(url, additional_headers={"Authorization": f"Bearer {alice.token}"}) as ws:
        try:
            frame = ws.recv(timeout=0.5)
        except TimeoutError:
            frame = None  # open, and nothing is newer than that id
        except ConnectionClosed as exc:
            pytest.fail(f"the stream died: {exc}")
        assert frame is None, json.loads(frame)
