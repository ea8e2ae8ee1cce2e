"""The wiring along the path of a prompt, each piece driven through the running system: a
follow-up starts from its session's snapshot, sub-sessions nest only so deep, the agent's
`session_status` reaches the control plane, and a push webhook rebuilds the image."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from app.schemas import RepoCreate
from tests.factories import ApiClient, git, make_repo, wait_for
from tests.fakes.llm import Call, ScriptBook, Turn

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        max_spawn_depth=1,
    )


def _results(api: ApiClient, session_id: str, name: str) -> list[dict[str, Any]]:
    return [e for e in api.events(session_id) if e["type"] == "tool_result" and e["name"] == name]


def test_a_follow_up_starts_from_the_sessions_snapshot(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    # `cache/` is ignored by git: what the first prompt leaves there is in no commit, so only
    # the snapshot of the session's sandbox can bring it back to the follow-up.
    repo = make_repo(tmp_path, "proj", {"README.md": "# proj\n", ".gitignore": "cache/\n"})
    api.add_repo(repo)
    openai_fake.script(
        "fill the cache",
        Turn.tool("write_file", path="cache/state.txt", content="warm state\n"),
        Turn.tool("write_file", path="NOTES.md", content="notes\n"),
        Turn.tool("finish", summary="Filled it.", title="Notes"),
    )
    openai_fake.script(
        "read the cache",
        Turn.tool("read_file", path="cache/state.txt"),
        Turn.tool("finish", summary="Read it."),
    )
    session = api.create("proj", "fill the cache")
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    wait_for(
        lambda: any(e["type"] == "snapshot" for e in api.events(session["id"])),
        20,
        "the snapshot of the first prompt's sandbox",
    )
    after = api.events(session["id"])[-1]["id"]
    r = api.http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "read the cache"})
    assert r.status_code == 202, r.text
    wait_for(
        lambda: _results(api, session["id"], "finish")[1:],
        30,
        "the follow-up to finish",
    )
    ready = [e for e in api.events(session["id"], after=after) if e["type"] == "sandbox_ready"]
    assert [e["mode"] for e in ready] == ["snapshot"]
    read = _results(api, session["id"], "read_file")
    assert read and not read[0]["is_error"], read
    assert "warm state" in read[0]["output"]
    assert "cache/state.txt" not in git(
        repo, "ls-tree", "-r", "--name-only", f"nightshift/{session['id']}"
    )


def test_sub_sessions_nest_no_deeper_than_the_setting(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    openai_fake.script(
        "top task",
        Turn.tool("spawn_session", "Delegating.", prompt="middle task"),
        Turn.tool("finish", summary="Delegated."),
    )
    openai_fake.script(
        "middle task",
        Turn.tool("spawn_session", "Delegating further.", prompt="bottom task"),
        Turn.tool("finish", summary="Could not delegate."),
    )
    openai_fake.script("bottom task", Turn.tool("finish", summary="never runs"))
    top = api.create("proj", "top task")
    api.wait_status(top["id"], "finished", "failed")
    children = api.session(top["id"])["children"]
    assert len(children) == 1
    middle = api.wait_status(children[0], "finished", "failed")
    assert middle["children"] == []
    refused = _results(api, middle["id"], "spawn_session")
    assert len(refused) == 1 and refused[0]["is_error"]
    assert "sub-sessions may nest 1 deep" in refused[0]["output"]
    everything = api.http.get("/api/sessions").json()["sessions"]
    assert len(everything) == 2  # no grandchild was created


def test_session_status_reports_a_child_through_the_agent_loop(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"))
    asked = threading.Event()
    # The child's id exists only once it is spawned: the turn that asks about it waits for
    # the test to fill it in.
    status_turn = Turn(text="Checking on it.", calls=[], gate=asked)
    openai_fake.script(
        "parent task",
        Turn.tool("spawn_session", "Delegating.", prompt="child task: write docs"),
        status_turn,
        Turn.tool("finish", summary="Checked."),
    )
    openai_fake.script(
        "child task",
        Turn(text="Working.", calls=[Call("write_file", {"path": "D.md", "content": "d\n"})]),
        Turn(text="", calls=[Call("finish", {"summary": "Wrote D.md", "title": "Docs"})]),
    )
    parent = api.create("proj", "parent task")
    spawned = wait_for(
        lambda: [e for e in api.events(parent["id"]) if e["type"] == "child_spawned"],
        20,
        "the child",
    )
    child_id = spawned[0]["child_id"]
    api.wait_status(child_id, "finished", "failed")
    status_turn.calls = [Call("session_status", {"session_id": child_id})]
    asked.set()
    api.wait_status(parent["id"], "finished", "failed")
    status = _results(api, parent["id"], "session_status")
    assert len(status) == 1 and not status[0]["is_error"], status
    reported = json.loads(status[0]["output"])
    assert reported["id"] == child_id and reported["status"] == "finished"
    assert reported["parent_id"] == parent["id"] and reported["branch"] == f"nightshift/{child_id}"
    # ... and the model was shown it: the next request carries it as the call's result.
    shown = [
        str(m.get("content"))
        for body in openai_fake.requests
        for m in body["messages"]
        if m.get("role") == "tool" and '"status": "finished"' in str(m.get("content"))
    ]
    assert shown and child_id in shown[-1], shown


def test_a_push_to_the_base_branch_rebuilds_the_image(gh: Any, tmp_path: Path) -> None:
    fake_repo = gh.fake.add_repo("octo/proj")
    gh.runtime.repos.add(RepoCreate(url="octo/proj"))

    def ready_images() -> list[Any]:
        return [i for i in gh.runtime.images.images("octo/proj") if i.status == "ready"]

    first = wait_for(ready_images, 60, "the image built when the repo was added")[0]
    work = tmp_path / "push-work"
    git(tmp_path, "clone", "-q", str(fake_repo.path), str(work))
    (work / "NEW.md").write_text("new\n")
    git(work, "add", "NEW.md")
    git(work, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qm", "new")
    git(work, "push", "-q", "origin", "main")
    sha = git(work, "rev-parse", "HEAD").strip()
    r = gh.deliver("push", gh.fake.push_payload("octo/proj", "refs/heads/main", sha))
    assert r.status_code == 202, r.text
    rebuilt = wait_for(
        lambda: [i for i in ready_images() if i.trigger == "push"], 60, "the push-triggered build"
    )
    assert rebuilt[0].sha == sha and rebuilt[0].id != first.id
