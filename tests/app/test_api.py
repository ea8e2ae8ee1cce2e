"""The REST contract: auth, validation and clear 4xx errors that change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ApiClient, make_repo
from tests.fakes.server import BackgroundServer


def _session_count(api: ApiClient) -> int:
    return int(api.http.get("/api/sessions").json()["total"])


def test_missing_or_wrong_token_is_401(server: BackgroundServer, api: ApiClient) -> None:
    with httpx.Client(timeout=30, base_url=server.url) as anon:
        r = anon.get("/api/sessions")
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
        r = anon.post(
            "/api/sessions",
            json={"repo": "x", "prompt": "y"},
            headers={"Authorization": "Bearer ns_wrong"},
        )
        assert r.status_code == 401 and "invalid" in r.json()["detail"]
        r = anon.get("/api/repos", headers={"Authorization": "Bearer not-even-ours"})
        assert r.status_code == 401
    assert _session_count(api) == 0


def test_bad_session_requests_are_refused_and_change_nothing(
    api: ApiClient, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    cases = [
        ({"repo": "nope", "prompt": "hi"}, 404, "unknown repo 'nope'"),
        ({"repo": "proj", "prompt": ""}, 422, "at least 1 character"),
        ({"repo": "proj", "prompt": "   \n "}, 422, "prompt is empty"),
        ({"repo": "proj", "prompt": "x" * 200_000}, 422, "the limit is 100000"),
        ({"repo": "proj"}, 422, "Field required"),
        ({"repo": "proj", "prompt": "hi", "surprise": 1}, 422, "Extra inputs are not permitted"),
        ({"repo": "proj", "prompt": "hi", "parent_id": "missing"}, 404, "no session 'missing'"),
    ]
    for body, status, message in cases:
        r = api.http.post("/api/sessions", json=body)
        assert r.status_code == status, (body, r.text)
        assert message in r.text, (body, r.text)
    assert _session_count(api) == 0


def test_one_megabyte_prompt_is_413(api: ApiClient, tmp_path: Path) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    r = api.http.post("/api/sessions", json={"repo": "proj", "prompt": "x" * (3 * 1024 * 1024)})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    # Without a Content-Length header (chunked), the limit holds too.
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"repo": "proj", "prompt": "'
        for _ in range(300):
            yield b"x" * 10_000
        yield b'"}'

    r = api.http.post(
        "/api/sessions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    r = api.http.post("/api/sessions", json={"repo": "proj", "prompt": "x" * (1024 * 1024)})
    assert r.status_code == 422  # 1 MB gets through the body limit but not the prompt limit
    assert _session_count(api) == 0


def test_malformed_json_is_422(api: ApiClient) -> None:
    r = api.http.post(
        "/api/sessions",
        content=b'{"repo": "proj", "prompt": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = api.http.post("/api/repos", content=b"[1, 2", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert api.http.get("/api/repos").json() == []


def test_follow_up_and_stop_on_unknown_session_are_404(api: ApiClient) -> None:
    assert api.http.post("/api/sessions/abc/prompts", json={"text": "hi"}).status_code == 404
    assert api.http.post("/api/sessions/abc/stop").status_code == 404
    assert api.http.get("/api/sessions/abc/events").status_code == 404
    assert api.http.get("/api/sessions/abc").json()["detail"] == "no session 'abc'"
    assert api.http.get("/api/sessions", params={"status": "bogus"}).status_code == 422


def test_repos_are_validated(api: ApiClient, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    r = api.http.post("/api/repos", json={"url": str(plain)})
    assert r.status_code == 422 and "not a git repository" in r.json()["detail"]
    r = api.http.post("/api/repos", json={"url": str(tmp_path / "missing")})
    assert r.status_code == 422 and "no such directory" in r.json()["detail"]
    r = api.http.post("/api/repos", json={"url": "octo/hello"})
    assert r.status_code == 422 and "GitHub forge is not configured" in r.json()["detail"]
    repo = make_repo(tmp_path, "proj")
    r = api.http.post("/api/repos", json={"url": str(repo), "egress": ["10.0.0.1"]})
    assert r.status_code == 422 and "IP literals are refused" in r.json()["detail"]
    r = api.http.post("/api/repos", json={"url": str(repo), "base": "bad..branch"})
    assert r.status_code == 422 and "not a valid branch name" in r.json()["detail"]
    assert api.http.get("/api/repos").json() == []
    created = api.add_repo(repo, description="the project")
    assert created["name"] == "proj" and created["base"] == "main" and created["forge"] == "local"
    r = api.http.post("/api/repos", json={"url": str(repo)})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    bare = make_repo(tmp_path, "lib", bare=True)
    assert api.add_repo(bare)["name"] == "lib"
    assert [r["name"] for r in api.http.get("/api/repos").json()] == ["lib", "proj"]
    assert api.http.get("/api/repos/proj").json()["description"] == "the project"
    assert api.http.get("/api/repos/nope").status_code == 404


def test_health_metrics_and_docs(server: BackgroundServer) -> None:
    with httpx.Client(timeout=30, base_url=server.url) as http:
        health = http.get("/healthz").json()
        assert (
            health["status"] == "ok"
            and health["mode"] == "embedded"
            and health["database"] == "sqlite"
        )
        assert health["sandbox"].startswith("bwrap-")
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "nightshift_events_total" in metrics.text
        spec = http.get("/openapi.json").json()
        for path in (
            "/api/sessions",
            "/api/sessions/{session_id}/prompts",
            "/api/sessions/{session_id}/stop",
            "/api/sessions/{session_id}/events",
            "/api/sessions/{session_id}/diff",
            "/api/repos",
            "/api/stats",
            "/healthz",
        ):
            assert path in spec["paths"], path
        assert http.get("/docs").status_code == 200


def test_health_and_repo_reads_answer_while_another_process_holds_the_write_lock(
    server: BackgroundServer, runtime: Any, api: ApiClient, tmp_path: Path
) -> None:
    """A long write (another process, a migration) must not make a load balancer think the
    server is down, nor stop the CLI from finding a repository by name, nor a repository's
    page from showing its images: those read without the lock."""
    import sqlite3

    api.add_repo(make_repo(tmp_path, "proj"))
    runtime.repos._by_name.clear()  # no answer from memory: the control DB is read
    control_db = sqlite3.connect(
        runtime.settings.control_db_url.removeprefix("sqlite:///"), isolation_level=None
    )
    control_db.execute("BEGIN IMMEDIATE")
    try:  # each would wait out SQLite's 10 s busy handler, and time out, if it took the lock
        assert httpx.get(server.url + "/healthz", timeout=5).json()["status"] == "ok"
        assert [r["name"] for r in api.http.get("/api/repos", timeout=5).json()] == ["proj"]
        assert api.http.get("/api/repos/proj", timeout=5).json()["name"] == "proj"
    finally:
        control_db.execute("COMMIT")
        control_db.close()


@pytest.fixture
def local_server(make_settings, openai_fake) -> BackgroundServer:  # type: ignore[no-untyped-def]
    from app.main import create_app
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(auth="local"))
    runtime.start()
    with BackgroundServer(create_app(runtime=runtime)) as srv:
        yield srv
    runtime.close()


def test_local_auth_acts_as_the_git_identity(
    local_server: BackgroundServer, tmp_path: Path
) -> None:
    with httpx.Client(timeout=30, base_url=local_server.url) as http:
        assert (
            http.post("/api/repos", json={"url": str(make_repo(tmp_path, "proj"))}).status_code
            == 201
        )
        session = http.post("/api/sessions", json={"repo": "proj", "prompt": "hello"}).json()
        assert session["author"]["name"] == "Local Tester"
        assert session["author"]["email"] == "local.tester@example.com"
        # A token still identifies its own user in local mode.
        assert (
            http.get("/api/sessions", headers={"Authorization": "Bearer ns_nope"}).status_code
            == 401
        )


def test_local_auth_refuses_a_public_address(make_settings) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"refusing to bind 0\.0\.0\.0"):
        make_settings(auth="local", host="0.0.0.0")


def test_the_fake_sandbox_is_refused_outside_the_test_suite(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NIGHTSHIFT_SANDBOX": "fake",
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "ns"),
    }
    # A server asked to start on it stops at once, naming the setting.
    serve = subprocess.run(
        [str(Path(sys.executable).parent / "nightshift"), "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 2, serve.stdout + serve.stderr
    assert "NIGHTSHIFT_SANDBOX=fake runs no commands" in serve.stderr
    # Having pytest at hand is not being the test suite: only the suite's switch allows it.
    out = subprocess.run(
        [sys.executable, "-c", "import pytest; from app.settings import Settings; Settings()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "NIGHTSHIFT_SANDBOX=fake runs no commands" in out.stderr
