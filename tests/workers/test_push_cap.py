"""The push cap, end to end: a push heavier than NIGHTSHIFT_MAX_PUSH_MB fails with an event
naming its biggest files, and nothing reaches the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, git, make_repo
from tests.fakes.llm import ScriptBook, Turn

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        max_push_mb=1,
    )


def test_a_push_over_the_cap_fails_naming_its_biggest_files(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "add data",
        Turn.tool(
            "run",
            command="mkdir -p data && head -c 3000000 /dev/urandom > data/big.bin "
            "&& head -c 1500000 /dev/urandom > medium.bin && echo small > small.txt",
        ),
        Turn.tool("finish", summary="Added data.", title="Add data"),
    )
    refs_before = git(repo, "for-each-ref")
    session = api.create("proj", "add data")
    done = api.wait_status(session["id"], "finished", "failed", timeout=60)
    assert done["status"] == "failed"
    events = api.events(session["id"])
    error = next(e for e in events if e["type"] == "error")
    assert error["code"] == "push_too_large"
    message = error["message"]
    assert "NIGHTSHIFT_MAX_PUSH_MB" in message and "1 MB" in message
    assert "data/big.bin (2.9 MB), medium.bin (1.4 MB), small.txt (0.0 MB)" in message
    assert not any(e["type"] == "branch_pushed" for e in events)
    assert git(repo, "for-each-ref") == refs_before


def test_a_push_under_the_cap_goes_through(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "add a little",
        Turn.tool("run", command="head -c 300000 /dev/urandom > blob.bin"),
        Turn.tool("finish", summary="Added a blob.", title="Add a blob"),
    )
    session = api.create("proj", "add a little")
    done = api.wait_status(session["id"], "finished", "failed", timeout=60)
    assert done["status"] == "finished", api.events(session["id"])
    branch = f"nightshift/{session['id']}"
    assert git(repo, "cat-file", "-s", f"{branch}:blob.bin").strip() == "300000"
