"""Plugins through the agent loop: the shipped `protected` plugin, a plugin that raises, and
one that cannot be imported."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from images.spec_file import parse_spec_file
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage
from tests.fakes.llm import ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.loop import AgentResult, run_agent
from workers.agent.plugins import PluginLoadError, load_plugins, plugin_hooks
from workers.agent.protected import is_protected
from workers.agent.tools import ToolContext, ToolOutput
from workers.config import AgentConfig
from workers.events import Author, ErrorRaised, Event, ToolResult

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _none(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    return ExecResult(2, "", "no commands", 1)


class Exploding:
    name = "exploding"

    async def after_tool(self, ctx: Any, tool: Any, args: Any, out: ToolOutput) -> ToolOutput:
        raise RuntimeError("boom")


class Shouting:
    name = "shouting"

    async def after_tool(self, ctx: Any, tool: Any, args: Any, out: ToolOutput) -> ToolOutput:
        return ToolOutput(out.text.upper(), out.is_error, out.exit_code, out.finished)

    def system_prompt(self, ctx: Any) -> str:
        return "SHOUTING PLUGIN ACTIVE"


@pytest.fixture
def plugin_module() -> Any:
    module = types.ModuleType("nightshift_test_plugins")
    module.Exploding = Exploding  # type: ignore[attr-defined]
    module.Shouting = Shouting  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _run(
    book: ScriptBook, tmp_path: Path, plugins: tuple[str, ...], protected: list[str]
) -> tuple[AgentResult, list[Event], FakeSandbox]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> tuple[AgentResult, FakeSandbox]:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_none).start(SandboxSpec(source=image))
        sandbox.files["migrations/0001.sql"] = b"create table t();\n"
        model = OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj", protected=protected),
            config=AgentConfig(plugins=plugins),
            publish=emit,
            prompt_id=1,
        )
        hooks = plugin_hooks(load_plugins(plugins))
        try:
            result = await run_agent(
                ctx, model, hooks, [], ChatMessage(role="user", text="change the schema"), 0.0
            )
        finally:
            await model.aclose()
        return result, sandbox

    result, sandbox = asyncio.run(go())
    return result, events, sandbox


def test_protected_paths_can_be_read_not_written(openai_fake: ScriptBook, tmp_path: Path) -> None:
    openai_fake.script(
        "change the schema",
        Turn.tool("read_file", path="migrations/0001.sql"),
        Turn.tool("write_file", path="migrations/0001.sql", content="drop table t;\n"),
        Turn.tool("edit_file", path="./migrations/0001.sql", old_text="create", new_text="drop"),
        Turn.tool("write_file", path="migrations_notes.md", content="ok\n"),
        Turn.tool("finish", summary="done"),
    )
    result, events, sandbox = _run(openai_fake, tmp_path, (), ["migrations/**"])
    assert result.outcome == "done"
    outputs = [(e.name, e.is_error, e.output) for e in events if isinstance(e, ToolResult)]
    assert outputs[0][:2] == ("read_file", False) and "create table" in outputs[0][2]
    assert outputs[1][1] and "protected" in outputs[1][2]
    assert outputs[2][1] and "protected" in outputs[2][2]
    assert outputs[3][:2] == ("write_file", False)
    assert sandbox.files["migrations/0001.sql"] == b"create table t();\n"
    assert "Protected paths (read-only for you): migrations/**" in str(
        openai_fake.requests[0]["messages"][0]
    )


def test_a_plugin_that_raises_is_an_event(
    openai_fake: ScriptBook, tmp_path: Path, plugin_module: Any
) -> None:
    openai_fake.script(
        "change the schema",
        Turn.tool("read_file", path="migrations/0001.sql"),
        Turn.tool("finish", summary="done"),
    )
    plugins = ("nightshift_test_plugins:Exploding", "nightshift_test_plugins:Shouting")
    result, events, _ = _run(openai_fake, tmp_path, plugins, [])
    assert result.outcome == "done"
    errors = [e for e in events if isinstance(e, ErrorRaised)]
    assert errors and errors[0].code == "plugin_error" and "exploding" in errors[0].message
    assert "boom" in errors[0].message
    # The session went on, and the other plugin still rewrote the output.
    read = next(e for e in events if isinstance(e, ToolResult))
    assert read.output == "CREATE TABLE T();\n" and not read.is_error
    assert "SHOUTING PLUGIN ACTIVE" in str(openai_fake.requests[0]["messages"][0])


def test_a_plugin_that_cannot_be_imported_stops_start(make_settings: Any) -> None:
    with pytest.raises(PluginLoadError, match="no_such_module"):
        load_plugins(("no_such_module:Thing",))
    with pytest.raises(PluginLoadError, match="not of the form"):
        load_plugins(("just_a_name",))
    from app.cli import app as cli

    result = CliRunner().invoke(cli, ["serve"], env={"NIGHTSHIFT_PLUGINS": "no_such_module:Thing"})
    assert result.exit_code != 0
    assert "no_such_module:Thing" in result.output and "ModuleNotFoundError" in result.output


def test_protected_globs() -> None:
    assert is_protected("migrations/a.sql", ["migrations/**"])
    assert is_protected("./secrets/key.pem", ["secrets"])
    assert is_protected("a/b/c.lock", ["*.lock"])
    assert not is_protected("src/app.py", ["migrations/**", "*.lock"])
    assert parse_spec_file('protected = ["migrations/**"]\n').protected == ["migrations/**"]
