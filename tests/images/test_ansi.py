"""Colour off in sandboxes, and escape sequences out of what the model and build logs see."""

from __future__ import annotations

from typing import Any

import pytest

from images.ansi import strip_ansi
from images.setup import BuildError, BuildLog, run_commands
from images.spec import RepoSpec
from tests.images.conftest import Starter
from workers.agent.tools import RunArgs, ToolContext, run
from workers.config import AgentConfig
from workers.events import Author, Event

pytestmark = pytest.mark.slow


def test_strip_ansi_removes_colours_cursor_moves_and_osc() -> None:
    text = "\x1b[1;31mFAILED\x1b[0m a\x1b[2K\x1b[1Gb \x1b]0;title\x07c \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"
    assert strip_ansi(text) == "FAILED ab c link"
    assert strip_ansi("plain\r\nline") == "plain\r\nline"
    assert strip_ansi("\x9b32mgreen\x9b0m") == "green"


@pytest.mark.parametrize("backend_name", ["bwrap", "gvisor"], indirect=True)
async def test_sandbox_commands_see_no_color_and_dumb_term(start: Starter) -> None:
    sandbox = await start()
    result = await sandbox.exec(["bash", "-c", 'echo "$NO_COLOR $TERM"'])
    assert result.stdout.strip() == "1 dumb"
    overridden = await sandbox.exec(["bash", "-c", 'echo "$TERM"'], env={"TERM": "xterm"})
    assert overridden.stdout.strip() == "xterm"


@pytest.mark.parametrize("backend_name", ["bwrap"], indirect=True)
async def test_build_log_and_failure_line_carry_no_escapes(start: Starter) -> None:
    sandbox = await start()
    spec = RepoSpec(
        name="demo",
        url="/nowhere",
        setup=[r"printf '\033[32mok\033[0m\n'", r"printf '\033[31mboom\033[0m\n' >&2; exit 3"],
    )
    build_log = BuildLog()
    with pytest.raises(BuildError) as failed:
        await run_commands(sandbox, spec, ("setup",), 30, build_log)
    assert str(failed.value).endswith("exited 3: boom")
    text = build_log.text()
    assert "\x1b" not in text
    assert "ok\n" in text and "boom\n" in text


class _NoControl:
    """The `run` tool never reaches the control plane; any call is a failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


@pytest.mark.parametrize("backend_name", ["bwrap"], indirect=True)
async def test_run_tool_output_reaches_the_model_without_escapes(start: Starter) -> None:
    sandbox = await start()

    async def publish(event: Event) -> None:
        return None

    ctx = ToolContext(
        session_id="s1",
        sandbox=sandbox,
        control=_NoControl(),  # type: ignore[arg-type]
        author=Author(id=1, login="dev", name="Dev", email="dev@example.com"),
        repo=RepoSpec(name="demo", url="/nowhere"),
        config=AgentConfig(),
        publish=publish,
    )
    command = r"printf '\033[1;32mPASSED\033[0m\n'; printf '\033[31mwarn\033[0m\n' >&2"
    output = await run(ctx, RunArgs(command=command))
    assert output.text == "exit code 0\nstdout:\nPASSED\n\nstderr:\nwarn\n"
