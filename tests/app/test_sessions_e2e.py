"""End to end through the real API, executor, bubblewrap sandbox and git, with a fake model
served over HTTP and driven by the official openai SDK."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.factories import ApiClient, Person, git, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn

pytestmark = pytest.mark.slow


def _edit_and_finish(path: str, content: str, title: str = "Add a file") -> list[Turn]:
    return [
        Turn.tool("list_files", "Looking around.", path="."),
        Turn.tool("write_file", "Writing it.", path=path, content=content),
        Turn.tool("run", command=f"cat {path} && echo ran-ok"),
        Turn.tool("finish", summary=f"Wrote {path}.", title=title),
    ]


def test_prompt_ends_in_commit_by_prompting_user_and_pr(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "contributing", *_edit_and_finish("CONTRIBUTING.md", "Be kind.\n", "Add CONTRIBUTING.md")
    )
    session = api.create("proj", "add a contributing guide")
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    branch = f"nightshift/{session['id']}"
    assert done["branch"] == branch
    log = git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", branch).strip()
    assert (
        log
        == "Alice Example <alice@example.com>|Alice Example <alice@example.com>|Add CONTRIBUTING.md"
    )
    assert git(repo, "show", f"{branch}:CONTRIBUTING.md") == "Be kind.\n"
    # The base branch and the work tree of the forge repo are untouched.
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", f"{branch}~1")
    assert not (repo / "CONTRIBUTING.md").exists()
    assert done["pr_state"] == "open" and done["pr_number"] == 1
    pr = api.http.get("/api/repos/proj/pulls/1").json()
    assert pr["head"] == branch and pr["base"] == "main" and pr["title"] == "Add CONTRIBUTING.md"
    types = [e["type"] for e in api.events(session["id"])]
    for expected in (
        "prompt_queued",
        "sandbox_ready",
        "model_request",
        "text_delta",
        "tool_call",
        "tool_result",
        "commit_created",
        "branch_pushed",
        "pr_opened",
    ):
        assert expected in types
    run_result = next(
        e for e in api.events(session["id"]) if e["type"] == "tool_result" and e["name"] == "run"
    )
    assert "ran-ok" in run_result["output"] and run_result["exit_code"] == 0
    diff = api.http.get(f"/api/sessions/{session['id']}/diff").json()
    assert "+Be kind." in diff["diff"]
    # The model saw the tools and the user's prompt.
    first = openai_fake.requests[0]
    assert {t["function"]["name"] for t in first["tools"]} >= {
        "read_file",
        "write_file",
        "edit_file",
        "run",
        "finish",
        "spawn_session",
        "session_status",
        "list_files",
        "search",
    }
    assert first["messages"][-1]["content"] == "add a contributing guide"


def test_follow_up_sent_mid_run_waits_its_turn(
    api: ApiClient, openai_fake: ScriptBook, bob: Person, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    gate = threading.Event()
    openai_fake.script(
        "first task",
        Turn.tool("write_file", "Starting.", path="one.txt", content="1\n"),
        Turn(text="Still thinking.", calls=[], gate=gate),
    )
    openai_fake.script("second task", *_edit_and_finish("two.txt", "2\n", "Second"))
    session = api.create("proj", "first task")
    wait_for(
        lambda: any(e["type"] == "tool_result" for e in api.events(session["id"])),
        20,
        "first tool call",
    )
    with api.as_(bob) as as_bob:
        r = as_bob.post(f"/api/sessions/{session['id']}/prompts", json={"text": "second task"})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "queued" and r.json()["position"] == 0
    assert r.json()["author"]["login"] == "bob"
    prompts = api.http.get(f"/api/sessions/{session['id']}/prompts").json()
    assert [p["state"] for p in prompts] == ["running", "queued"]
    gate.set()
    api.wait_status(session["id"], "finished")
    wait_for(
        lambda: all(
            p["state"] == "done"
            for p in api.http.get(f"/api/sessions/{session['id']}/prompts").json()
        ),
        20,
        "both prompts",
    )
    events = api.events(session["id"])
    finished = [e["prompt_id"] for e in events if e["type"] == "prompt_finished"]
    assert finished == [prompts[0]["id"], prompts[1]["id"]]
    started = [e["prompt_id"] for e in events if e["type"] == "prompt_started"]
    assert started == finished  # the second started only after the first finished
    branch = f"nightshift/{session['id']}"
    # The second prompt's commit is Bob's, with Alice as co-author.
    log = git(repo, "log", "--format=%an|%B%x00", branch).split("\x00")
    assert log[0].strip().startswith("Bob Example|Second")
    assert "Co-authored-by: Alice Example <alice@example.com>" in log[0]
    assert log[1].strip().startswith("Alice Example|")
    assert (
        git(repo, "show", f"{branch}:two.txt") == "2\n"
        and git(repo, "show", f"{branch}:one.txt") == "1\n"
    )
    participants = {p["login"] for p in api.session(session["id"])["participants"]}
    assert participants == {"alice", "bob"}
    listed = api.http.get("/api/sessions", params={"repo": "proj"}).json()["sessions"]
    assert [p["login"] for p in listed[0]["participants"]] == ["alice", "bob"]
    assert listed[0]["last_event_id"] >= events[-1]["id"]
    # The follow-up saw the first prompt's conversation.
    second_request = next(
        r
        for r in openai_fake.requests
        if r["messages"][-1].get("content") and "second task" in str(r["messages"][-1]["content"])
    )
    assert any("first task" in str(m.get("content")) for m in second_request["messages"])


def test_stop_mid_run_leaves_session_stopped_and_repo_untouched(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "slow task",
        Turn.tool("write_file", path="partial.txt", content="half\n"),
        Turn.tool("run", command="sleep 60"),
        Turn.tool("finish", summary="never"),
    )
    refs_before = git(repo, "for-each-ref")
    session = api.create("proj", "slow task")
    wait_for(
        lambda: any(
            e["type"] == "tool_call" and e["name"] == "run" for e in api.events(session["id"])
        ),
        20,
        "the sleep",
    )
    queued = api.http.post(
        f"/api/sessions/{session['id']}/prompts", json={"text": "never runs"}
    ).json()
    r = api.http.post(f"/api/sessions/{session['id']}/stop")
    assert r.status_code == 200
    stopped = api.wait_status(session["id"], "stopped", timeout=15)
    assert stopped["head_sha"] is None and stopped["pr_url"] is None
    assert git(repo, "for-each-ref") == refs_before
    prompts = {
        p["id"]: p["state"] for p in api.http.get(f"/api/sessions/{session['id']}/prompts").json()
    }
    assert prompts[queued["id"]] == "cancelled"
    assert "stopped" in prompts.values()
    # A stopped session accepts a new prompt and runs it.
    openai_fake.script("after stop", *_edit_and_finish("after.txt", "ok\n"))
    api.http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "after stop"})
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"


def test_spawn_session_creates_a_child_visible_in_the_parent(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "parent work",
        Turn.tool("spawn_session", "Delegating.", prompt="child work: add docs"),
        Turn.tool("finish", summary="Delegated the docs."),
    )
    openai_fake.script("child work", *_edit_and_finish("DOCS.md", "docs\n"))
    parent = api.create("proj", "parent work")
    api.wait_status(parent["id"], "finished", "failed")
    parent = api.session(parent["id"])
    assert len(parent["children"]) == 1
    child = api.wait_status(parent["children"][0], "finished", "failed")
    assert child["parent_id"] == parent["id"] and child["status"] == "finished"
    assert child["author"]["login"] == "alice"
    spawned = [e for e in api.events(parent["id"]) if e["type"] == "child_spawned"]
    assert spawned and spawned[0]["child_id"] == child["id"]
    assert git(repo, "show", f"nightshift/{child['id']}:DOCS.md") == "docs\n"
    listed = api.http.get("/api/sessions", params={"parent_id": parent["id"]}).json()
    assert [s["id"] for s in listed["sessions"]] == [child["id"]]
    everything = {s["id"]: s for s in api.http.get("/api/sessions").json()["sessions"]}
    assert everything[parent["id"]]["children"] == [child["id"]]
    assert everything[child["id"]]["children"] == []


def test_sub_sessions_nest_only_max_spawn_depth_deep(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """With NIGHTSHIFT_MAX_SPAWN_DEPTH at its default (2), a grandchild may not spawn again:
    the model is told why, and no session is created."""
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    for level, nxt in (("alpha task", "beta task"), ("beta task", "gamma task")):
        openai_fake.script(
            level,
            Turn.tool("spawn_session", "Delegating.", prompt=nxt),
            Turn.tool("finish", summary=f"{level} delegated"),
        )
    openai_fake.script(
        "gamma task",
        Turn.tool("spawn_session", "Delegating again.", prompt="delta task"),
        Turn.tool("finish", summary="gamma task done"),
    )
    openai_fake.script("delta task", *_edit_and_finish("DELTA.md", "too deep\n"))
    root = api.create("proj", "alpha task")
    api.wait_status(root["id"], "finished", "failed")
    child = api.wait_status(api.session(root["id"])["children"][0], "finished", "failed")
    wait_for(lambda: api.session(child["id"])["children"], 30, "the grandchild")
    grandchild_id = api.session(child["id"])["children"][0]
    api.wait_status(grandchild_id, "finished", "failed")
    assert api.session(grandchild_id)["children"] == []
    refused = [
        e
        for e in api.events(grandchild_id)
        if e["type"] == "tool_result" and e["name"] == "spawn_session"
    ]
    assert len(refused) == 1 and refused[0]["is_error"]
    assert "may nest 2 deep" in refused[0]["output"]
    everything = api.http.get("/api/sessions").json()["sessions"]
    assert len(everything) == 3


def test_session_status_through_the_agent_loop_reports_any_session(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script("first job", *_edit_and_finish("FIRST.md", "first\n"))
    first = api.create("proj", "first job")
    assert api.wait_status(first["id"], "finished", "failed")["status"] == "finished"
    openai_fake.script(
        "second job",
        Turn.tool("session_status", "Checking the first.", session_id=first["id"]),
        Turn.tool("session_status", "Checking a stranger.", session_id="no-such-session"),
        Turn.tool("finish", summary="checked"),
    )
    second = api.create("proj", "second job")
    api.wait_status(second["id"], "finished", "failed")
    results = [
        e
        for e in api.events(second["id"])
        if e["type"] == "tool_result" and e["name"] == "session_status"
    ]
    assert len(results) == 2
    known, unknown = results
    assert not known["is_error"]
    reported = json.loads(known["output"])
    assert reported["id"] == first["id"] and reported["status"] == "finished"
    assert reported["branch"] == f"nightshift/{first['id']}"
    assert unknown["is_error"] and "no-such-session" in unknown["output"]


def test_tool_errors_reach_the_model_and_change_nothing(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "escape",
        Turn.tool("write_file", path="../../etc/x", content="x"),
        Turn.tool("write_file", path="/etc/passwd", content="x"),
        Turn.tool("read_file", path="/etc/shadow"),
        Turn.tool("finish", summary="tried"),
    )
    session = api.create("proj", "escape please")
    api.wait_status(session["id"], "finished", "failed")
    results = [
        e for e in api.events(session["id"]) if e["type"] == "tool_result" and e["name"] != "finish"
    ]
    assert len(results) == 3 and all(r["is_error"] for r in results)
    assert "escapes the workspace" in results[0]["output"]
    assert "absolute paths are refused" in results[1]["output"]
    assert not Path("/etc/x").exists()
    assert api.session(session["id"])["head_sha"] is None  # nothing changed, nothing pushed


def test_no_model_configured_fails_with_the_variables_to_set(make_settings, tmp_path: Path) -> None:
    from app.runtime import build_runtime
    from tests.factories import make_person

    rt = build_runtime(make_settings())
    rt.start()
    try:
        person = make_person(rt, "carol", "Carol", "carol@example.com")
        rt.repos.add(
            __import__("app.schemas", fromlist=["RepoCreate"]).RepoCreate(
                url=str(make_repo(tmp_path, "p"))
            )
        )
        session = rt.sessions.create(person.user, "p", "do something")
        wait_for(lambda: rt.sessions.get(session.id).status == "failed", 20, "failure")
        errors = [e for e in rt.sessions.events(session.id) if e.type == "error"]
        assert errors and errors[0].code == "model_not_configured"
        assert "NIGHTSHIFT_MODEL" in errors[0].message and "OPENAI_API_KEY" in errors[0].message
    finally:
        rt.close()


def test_model_429_and_500_are_retried(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.fail_next(429, retry_after="0")
    openai_fake.fail_next(500, retry_after="0")
    openai_fake.script("flaky", *_edit_and_finish("F.md", "f\n"))
    session = api.create("proj", "flaky endpoint")
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    retries = [e for e in api.events(session["id"]) if e["type"] == "model_retry"]
    assert [r["retry"] for r in retries] == [1, 2]
    assert "429" in retries[0]["reason"] and "500" in retries[1]["reason"]


def test_a_declared_image_that_cannot_be_pulled_fails_the_session_in_one_line(
    api: ApiClient, tmp_path: Path
) -> None:
    """A repository with no image yet whose devcontainer.json names an image this server
    cannot reach (an air-gapped host, a registry down): the session fails with the registry's
    reason as an `image_error`, never an internal error."""
    dev = '{"image": "127.0.0.1:9/devcontainers/python:3"}\n'
    repo = make_repo(tmp_path, "proj", {".devcontainer/devcontainer.json": dev})
    api.add_repo(repo)
    session = api.create("proj", "anything")
    done = api.wait_status(session["id"], "failed", "finished", timeout=60)
    errors = [e for e in api.events(session["id"]) if e["type"] == "error"]
    assert done["status"] == "failed" and errors, api.events(session["id"])
    assert errors[-1]["code"] == "image_error", errors
    message = errors[-1]["message"]
    assert "127.0.0.1:9/devcontainers/python:3" in message and "\n" not in message
    assert "internal error" not in message and "level=" not in message
