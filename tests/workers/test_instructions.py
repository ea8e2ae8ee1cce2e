"""Repository instructions (AGENTS.md, root and nested) and skills loaded on demand, through
the agent loop with a model server fake driven by the official OpenAI SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage
from tests.fakes.llm import Call, ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.hooks import Hooks
from workers.agent.instructions import parse_front_matter
from workers.agent.loop import AgentResult, run_agent
from workers.agent.tools import ToolContext
from workers.config import AgentConfig
from workers.events import Author, Event, InstructionsLoaded, Notice, ToolResult

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _no_commands(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    return ExecResult(2, "", "no commands here", 1)


def _run(
    book: ScriptBook, tmp_path: Path, files: dict[str, str], config: AgentConfig, prompt: str
) -> tuple[AgentResult, list[Event]]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> AgentResult:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_no_commands).start(SandboxSpec(source=image))
        for path, text in files.items():
            sandbox.files[path] = text.encode()
        model = OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj"),
            config=config,
            publish=emit,
            prompt_id=1,
        )
        try:
            return await run_agent(
                ctx, model, Hooks(), [], ChatMessage(role="user", text=prompt), 0.0
            )
        finally:
            await model.aclose()

    return asyncio.run(go()), events


def _system(body: dict[str, Any]) -> str:
    return str(body["messages"][0]["content"])


SKILL = "---\nname: release-notes\ndescription: How to write release notes here\n---\n"


def test_agents_md_root_and_nested_closest_wins(openai_fake: ScriptBook, tmp_path: Path) -> None:
    openai_fake.script(
        "tidy the parser",
        Turn.tool("read_file", path="src/parser/core.py"),
        Turn.tool("read_file", path="src/parser/lexer.py"),
        Turn.tool("read_file", path="README.md"),
        Turn.tool("finish", summary="tidied"),
    )
    files = {
        "AGENTS.md": "Always run `make check` before finishing.",
        "src/AGENTS.md": "SRC RULES: use tabs.",
        "src/parser/AGENTS.md": "PARSER RULES: never touch the grammar tables.",
        "src/parser/core.py": "x = 1\n",
        "src/parser/lexer.py": "y = 2\n",
        "README.md": "# proj\n",
    }
    result, events = _run(openai_fake, tmp_path, files, AgentConfig(), "tidy the parser")
    assert result.outcome == "done"
    # The root AGENTS.md is in the system prompt of every request.
    assert all("Always run `make check`" in _system(b) for b in openai_fake.requests)
    outputs = [e.output for e in events if isinstance(e, ToolResult)]
    # The closest nested AGENTS.md comes with the first file under it, once; the farther
    # src/AGENTS.md loses to it.
    assert "PARSER RULES" in outputs[0] and "SRC RULES" not in outputs[0]
    assert "PARSER RULES" not in outputs[1] and "AGENTS.md" not in outputs[2]
    loaded = [e for e in events if isinstance(e, InstructionsLoaded)]
    assert loaded[0].agents_md == ["AGENTS.md"]
    assert [e.agents_md for e in loaded[1:]] == [["src/parser/AGENTS.md"]]


def test_skill_loaded_on_demand_from_repo_and_operator_dir(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    operator = tmp_path / "skills"
    (operator / "deploy").mkdir(parents=True)
    (operator / "deploy" / "SKILL.md").write_text(
        "---\nname: deploy\ndescription: Shipping to staging\n---\nRun ./ship staging.\n"
    )
    (operator / "deploy" / "ship.sh").write_text("echo ship\n")
    (operator / "broken").mkdir()
    (operator / "broken" / "SKILL.md").write_text("no front matter at all\n")
    openai_fake.script(
        "write the release notes",
        Turn(calls=[Call("load_skill", {"name": "release-notes"})]),
        Turn(calls=[Call("load_skill", {"name": "nope"})]),
        Turn.tool("finish", summary="notes written"),
    )
    files = {
        ".nightshift/skills/notes/SKILL.md": SKILL + "FULL SKILL TEXT: one line per change.\n",
        ".nightshift/skills/notes/template.md": "## Changes\n",
    }
    config = AgentConfig(skills_dir=str(operator))
    result, events = _run(openai_fake, tmp_path, files, config, "write the release notes")
    assert result.outcome == "done"
    system = _system(openai_fake.requests[0])
    # Only names and descriptions are in the prompt.
    assert "release-notes: How to write release notes here" in system
    assert "deploy: Shipping to staging" in system
    assert "FULL SKILL TEXT" not in system and "./ship staging" not in system
    outputs = [(e.output, e.is_error) for e in events if isinstance(e, ToolResult)]
    assert "FULL SKILL TEXT" in outputs[0][0] and "template.md" in outputs[0][0]
    assert outputs[1][1] and "deploy" in outputs[1][0] and "release-notes" in outputs[1][0]
    loaded = next(e for e in events if isinstance(e, InstructionsLoaded))
    assert loaded.skills == ["deploy", "release-notes"]
    skipped = [e.message for e in events if isinstance(e, Notice)]
    assert len(skipped) == 1 and "broken/SKILL.md" in skipped[0] and "front matter" in skipped[0]


def test_long_instructions_are_cut_with_a_note(openai_fake: ScriptBook, tmp_path: Path) -> None:
    openai_fake.script("anything", Turn.tool("finish", summary="ok"))
    files = {"AGENTS.md": "A" * 5000 + "TAIL-MARKER"}
    config = AgentConfig(instructions_max_chars=1000)
    result, _ = _run(openai_fake, tmp_path, files, config, "anything")
    system = _system(openai_fake.requests[0])
    assert result.outcome == "done"
    assert "TAIL-MARKER" not in system and "NIGHTSHIFT_INSTRUCTIONS_MAX_CHARS" in system


def test_front_matter_errors_say_what_is_wrong() -> None:
    assert parse_front_matter(SKILL + "body") == (
        "release-notes",
        "How to write release notes here",
        "body",
    )
    for text, why in [
        ("body only", "no front matter"),
        ("---\nname: x\n", "not closed"),
        ("---\nname: x\n---\n", "lacks description"),
    ]:
        try:
            parse_front_matter(text)
        except ValueError as exc:
            assert why in str(exc)
        else:
            raise AssertionError(f"{text!r} was accepted")


def test_skill_settings_reach_the_agent(make_settings: Any, tmp_path: Path) -> None:
    config = make_settings(skills_dir=tmp_path, instructions_max_chars=5000).agent_config()
    assert (config.skills_dir, config.instructions_max_chars) == (str(tmp_path), 5000)
