"""Plugins that add tools and listen to events, loaded through `NIGHTSHIFT_PLUGINS` into the
running system (embedded runtime, real sandbox, the fake model behind the OpenAI SDK)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, git, make_repo
from tests.fakes.llm import ScriptBook, Turn
from tests.workers import plugin_sample
from workers.agent.plugins import PluginLoadError, load_plugins

pytestmark = pytest.mark.slow
SAMPLE = "tests.workers.plugin_sample"


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        plugins=f"{SAMPLE}:Recorder,{SAMPLE}:Flaky",
    )


def test_plugin_tools_and_event_listeners_run_in_a_session(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    plugin_sample.SEEN.clear()
    repo = make_repo(tmp_path, "proj", {"README.md": "# proj\none\ntwo\n", "SECRET.md": "x\n"})
    api.add_repo(repo)
    openai_fake.script(
        "count things",
        Turn.tool("count_lines", path="README.md"),
        Turn.tool("count_lines", path="SECRET.md"),
        Turn.tool("explode", path="README.md"),
        Turn.tool("finish", summary="counted"),
    )
    session = api.create("proj", "count things")
    done = api.wait_status(session["id"], "finished", "failed", timeout=60)
    events = api.events(session["id"])
    assert done["status"] == "finished", events
    # The plugin's tools are in the model's tool list, beside the built-in ones.
    offered = [t["function"]["name"] for t in openai_fake.requests[0]["tools"]]
    assert {"count_lines", "explode", "run", "finish"} <= set(offered)
    results = [
        (e["name"], e["is_error"], e["output"]) for e in events if e["type"] == "tool_result"
    ]
    assert results[0] == ("count_lines", False, "README.md: 3 lines")
    # Its calls go through the same refusal hooks as any tool.
    assert results[1][:2] == ("count_lines", True) and "may not look at SECRET.md" in results[1][2]
    # A tool that raises is an error for the model and a plugin_error event; the run goes on.
    assert results[2][:2] == ("explode", True) and "the tool broke" in results[2][2]
    errors = [e["message"] for e in events if e["type"] == "error"]
    assert any("recorder" in m and "tool explode" in m for m in errors), errors
    # A listener that raises is reported once, with the event it failed on, and nothing stops.
    flaky = [m for m in errors if "flaky" in m]
    assert len(flaky) == 1 and "on_event (sandbox_ready)" in flaky[0], errors
    # The listener saw every event the run emitted, in order (its own report aside).
    run_events = [
        e
        for e in events
        if e["prompt_id"] is not None
        and e["type"] != "prompt_queued"
        and not (e["type"] == "error" and "on_event" in e["message"])
    ]
    seen = [(e.type, e.prompt_id) for e in plugin_sample.SEEN if e.prompt_id is not None]
    assert seen == [(e["type"], e["prompt_id"]) for e in run_events]
    assert {"prompt_started", "sandbox_ready", "tool_call", "tool_result", "usage"} <= {
        t for t, _ in seen
    }
    assert [e.type for e in plugin_sample.SEEN][-1] == "status"  # the final "finished"


def test_a_plugin_tool_may_not_take_a_used_name() -> None:
    with pytest.raises(PluginLoadError, match="'run' is already a built-in tool"):
        load_plugins((f"{SAMPLE}:Clashing",))
    with pytest.raises(PluginLoadError, match="already a tool of plugin 'recorder'"):
        load_plugins((f"{SAMPLE}:Recorder", f"{SAMPLE}:Recorder"))


def test_protected_paths_written_by_run_are_restored(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    files = {
        "README.md": "# proj\n",
        ".nightshift.toml": 'protected = ["migrations/**"]\n',
        "migrations/0001.sql": "create table t();\n",
        "migrations/0002.sql": "create table u();\n",
    }
    repo = make_repo(tmp_path, "proj", files)
    api.add_repo(repo)
    command = (
        "echo 'drop table t;' > migrations/0001.sql && rm migrations/0002.sql"
        " && echo x > migrations/0003.sql && echo fine > NOTES.md && cat migrations/0001.sql"
    )
    openai_fake.script(
        "sneak past",
        Turn.tool("run", command=command),
        Turn.tool("run", command="cat migrations/0001.sql migrations/0002.sql; ls migrations"),
        Turn.tool("finish", summary="tried", title="Try"),
    )
    session = api.create("proj", "sneak past")
    done = api.wait_status(session["id"], "finished", "failed", timeout=60)
    events = api.events(session["id"])
    assert done["status"] == "finished", events
    runs = [e for e in events if e["type"] == "tool_result" and e["name"] == "run"]
    # The command ran (its own output shows its write), then its protected writes were undone.
    assert runs[0]["is_error"] and "drop table t;" in runs[0]["output"]
    assert (
        "refused: this command wrote to protected paths (migrations/0001.sql, "
        "migrations/0002.sql, migrations/0003.sql); they were restored" in runs[0]["output"]
    )
    # The next command sees the files as they were; the unprotected write stayed.
    assert not runs[1]["is_error"], runs[1]
    assert "create table t();\ncreate table u();\n0001.sql\n0002.sql\n" in runs[1]["output"]
    assert "refused" not in runs[1]["output"]
    branch = f"nightshift/{session['id']}"
    assert git(repo, "show", f"{branch}:NOTES.md") == "fine\n"
    changed = git(repo, "diff", "--name-only", f"main...{branch}").split()
    assert changed == ["NOTES.md"]
