"""A whole session on a repository that declares its image, under bubblewrap and gVisor: the
agent loop (fake model) runs a command that only the image has, and the model is told what
the image's tool printed; the host's tools are out of the sandbox's sight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import ApiClient, git, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.registry import missing_tool
from tests.images.conftest import unavailable
from tests.images.oci_fixtures import registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool())),
]


@pytest.fixture(params=["bwrap", "gvisor"])
def settings(request: pytest.FixtureRequest, make_settings: Any, openai_fake: ScriptBook) -> Any:
    reason = unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return make_settings(
        sandbox=request.param,
        image_interval=0,
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
    )


def test_a_session_command_finds_a_tool_only_the_image_has(
    api: ApiClient, runtime: Any, openai_fake: ScriptBook, tool_image: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {".nightshift.toml": f'image = "{tool_image}"\n'})
    api.add_repo(repo)  # adding it starts a build
    image = wait_for(lambda: runtime.image_registry.newest("proj"), 120, "the image build")
    assert image.environment_digest is not None
    openai_fake.script(
        "use the tool",
        Turn.tool("run", command="only-in-image > used.txt; echo $GREETING; ls /usr/local"),
        Turn.tool("finish", summary="Used the image's tool.", title="Use the tool"),
    )
    session = api.create("proj", "use the tool")
    done = api.wait_status(session["id"], "finished", "failed")
    events = api.events(session["id"])
    assert done["status"] == "finished", [e.get("message") for e in events if e["type"] == "error"]
    ready = next(e for e in events if e["type"] == "sandbox_ready")
    assert ready.get("mode") in ("image", "warm"), ready
    ran = next(e for e in events if e["type"] == "tool_result" and e["name"] == "run")
    assert "hi" in ran["output"] and "No such file" in ran["output"], ran
    assert ran["exit_code"] != 0  # /usr/local is the host's, not the image's
    assert git(repo, "show", f"{done['branch']}:used.txt") == "from-image\n"
    # The model was sent what the image's tool printed.
    sent = openai_fake.requests[-1]  # type: ignore[attr-defined]
    assert "hi" in str(sent)
