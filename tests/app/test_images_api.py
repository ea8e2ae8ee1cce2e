"""Images and warm-up through the real API: build logs, the warm endpoint and its contract,
a warm call followed by a prompt, the schedule, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, Person, git, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.images.conftest import commit

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        image_interval=0,
        pool_interval=3600,
    )


def test_warm_call_then_prompt_claims_the_warm_sandbox(
    api: ApiClient, openai_fake: ScriptBook, bob: Person, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo, setup=["echo deps > deps.txt"])  # adding a repo queues its image build
    image = api.ready_image("proj")
    assert api.http.get("/api/repos/proj/warm").json() == {
        "repo": "proj",
        "state": "cold",
        "sandbox_id": None,
        "expires_at": None,
        "error": None,
    }
    r = api.http.post("/api/repos/proj/warm")
    assert r.status_code == 202
    body = r.json()
    assert body["repo"] == "proj" and body["state"] in ("warming", "warm")
    assert body["expires_at"] is not None
    warm = wait_for(
        lambda: (b := api.http.get("/api/repos/proj/warm").json())["state"] == "warm" and b,
        30,
        "the warm sandbox",
    )
    assert warm["sandbox_id"]
    again = api.http.post("/api/repos/proj/warm").json()  # idempotent: same sandbox
    assert again["state"] == "warm" and again["sandbox_id"] == warm["sandbox_id"]
    with api.as_(bob) as as_bob:  # warm-up is per caller
        assert as_bob.get("/api/repos/proj/warm").json()["state"] == "cold"
    openai_fake.script(
        "use the deps",
        Turn.tool("read_file", path="deps.txt"),
        Turn.tool("finish", summary="read it"),
    )
    session = api.create("proj", "use the deps")
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    events = api.events(session["id"])
    ready = next(e for e in events if e["type"] == "sandbox_ready")
    assert ready["mode"] == "warm" and ready["sandbox_id"] == warm["sandbox_id"]
    assert ready["image"] == image["id"]
    assert any(e["type"] == "sync_done" for e in events)
    read = next(e for e in events if e["type"] == "tool_result" and e["name"] == "read_file")
    assert read["output"] == "deps\n"
    assert api.session(session["id"])["start_mode"] == "warm"
    assert api.http.get("/api/repos/proj/warm").json()["state"] == "cold"  # it was used up


def test_images_list_shows_build_logs_for_failures(api: ApiClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    good = api.ready_image("proj")
    commit(
        repo, {".nightshift.toml": 'setup = ["echo compiling", "echo no compiler >&2; exit 7"]\n'}
    )
    r = api.http.post("/api/images/build", json={"repos": ["proj"]})
    assert r.status_code == 202 and r.json() == {"queued": ["proj"]}
    failed = wait_for(
        lambda: next(
            (i for i in api.http.get("/api/images").json() if i["status"] == "failed"), None
        ),
        60,
        "the failed build",
    )
    assert "exit 7" in failed["log"] and "no compiler" in failed["log"]
    assert "exited 7" in failed["error"]
    listed = {i["id"]: i for i in api.http.get("/api/images").json()}
    assert listed[good["id"]]["status"] == "ready" and listed[good["id"]]["log"] is None
    detail = api.http.get(f"/api/images/{good['id']}").json()
    assert "cloned proj" in detail["log"]
    assert api.http.get("/api/images/img-nope").status_code == 404


def test_bad_input_gets_clear_errors(api: ApiClient, tmp_path: Path) -> None:
    r = api.http.post("/api/repos/nope/warm")
    assert r.status_code == 404 and "unknown repo 'nope'" in r.json()["detail"]
    assert api.http.get("/api/repos/nope/warm").status_code == 404
    assert api.http.get("/api/images", params={"repo": "nope"}).status_code == 404
    r = api.http.post("/api/images/build", json={"repos": ["nope"]})
    assert r.status_code == 404
    r = api.http.post("/api/images/build", json={"repos": ["x"], "bogus": 1})
    assert r.status_code == 422
    bad = make_repo(
        tmp_path, "bad", {".nightshift.toml": '# spec\nsetup = ["ok"]\nwarm = [1]\n', "a": "a\n"}
    )
    r = api.http.post("/api/repos", json={"url": str(bad)})
    assert r.status_code == 422
    assert (
        r.json()["detail"]
        == "bad: .nightshift.toml line 3: warm[0] must be a non-empty command string"
    )
    assert api.http.get("/api/repos").json() == []  # nothing was registered
    missing_base = make_repo(tmp_path, "other")
    r = api.http.post("/api/repos", json={"url": str(missing_base), "base": "develop"})
    assert r.status_code == 422 and "develop" in r.json()["detail"]
    r = api.http.get("/api/repos/proj/warm", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_next_scheduled_build_picks_up_a_new_commit(make_settings: Any, tmp_path: Path) -> None:
    from app.runtime import build_runtime
    from app.schemas import RepoCreate

    rt = build_runtime(make_settings(image_interval=0.5, pool_interval=3600))
    rt.start()
    try:
        repo = make_repo(tmp_path, "proj")
        rt.repos.add(RepoCreate(url=str(repo)))
        first = wait_for(lambda: rt.image_registry.newest("proj"), 60, "the first image")
        assert first.sha == git(repo, "rev-parse", "main").strip()
        tip = commit(repo, {"feature.py": "x = 1\n"})
        second = wait_for(
            lambda: (n := rt.image_registry.newest("proj")) is not None and n.sha == tip and n,
            60,
            "the scheduled build of the new commit",
        )
        assert second.trigger == "schedule" and second.id != first.id
    finally:
        rt.close()
