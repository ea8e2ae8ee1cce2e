"""The background git sync: a sandbox from an older image catches up with the base tip while
the agent already reads; writes wait for it, so none lands on a stale tree."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, git, make_repo, wait_for
from tests.fakes.forge import GatedForge
from tests.fakes.llm import Call, ScriptBook, Turn
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


def test_write_issued_before_the_sync_finishes_lands_on_the_synced_tree(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    forge = GatedForge()
    runtime.forges["local"] = forge
    repo = make_repo(tmp_path, "proj", {"app.py": "VERSION = 1\n"})
    api.add_repo(repo)
    image = wait_for(lambda: runtime.image_registry.newest("proj"), 60, "the image")
    tip = commit(repo, {"app.py": "VERSION = 2\n"}, "bump")  # the image is now behind
    assert image.sha != tip
    forge.gate.clear()  # hold the host-side fetch of the base branch
    first_answer = threading.Event()
    openai_fake.script(
        "bump again",
        Turn(
            text="Reading, then editing.",
            calls=[
                Call("read_file", {"path": "app.py"}),
                Call(
                    "edit_file",
                    {"path": "app.py", "old_text": "VERSION = 2", "new_text": "VERSION = 3"},
                ),
            ],
            gate=first_answer,
        ),
        Turn.tool("finish", summary="Bumped to 3.", title="Bump to 3"),
    )
    session = api.create("proj", "bump again")
    wait_for(lambda: forge.held.is_set(), 30, "the sync to start")
    first_answer.set()

    def edit_waiting() -> bool:
        events = api.events(session["id"])
        read = [e for e in events if e["type"] == "tool_result" and e["name"] == "read_file"]
        edit_called = any(e["type"] == "tool_call" and e["name"] == "edit_file" for e in events)
        return bool(read) and edit_called

    wait_for(edit_waiting, 30, "the read to run and the edit to wait")
    events = api.events(session["id"])
    read = next(e for e in events if e["type"] == "tool_result" and e["name"] == "read_file")
    assert read["output"] == "VERSION = 1\n"  # reads run at once, on the image's tree
    assert not any(e["type"] == "sync_done" for e in events)
    assert not any(e["type"] == "tool_result" and e["name"] == "edit_file" for e in events)
    forge.gate.set()
    done = api.wait_status(session["id"], "finished", "failed")
    assert done["status"] == "finished", api.events(session["id"])
    events = api.events(session["id"])
    sync = next(e for e in events if e["type"] == "sync_done")
    edit = next(e for e in events if e["type"] == "tool_result" and e["name"] == "edit_file")
    assert sync["sha"] == tip and sync["id"] < edit["id"]
    assert not edit["is_error"], edit["output"]
    branch = f"nightshift/{session['id']}"
    assert git(repo, "show", f"{branch}:app.py") == "VERSION = 3\n"
    assert git(repo, "rev-parse", f"{branch}~1").strip() == tip  # built on the synced tip
    pushed = next(e for e in events if e["type"] == "branch_pushed")
    assert pushed["base_sha"] == tip
