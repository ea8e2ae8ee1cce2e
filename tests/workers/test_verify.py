"""Verified work: the repository's verify commands at `finish`, through the agent loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from images.spec_file import parse_spec_file
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage
from tests.fakes.llm import ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.hooks import Hooks
from workers.agent.loop import AgentResult, run_agent
from workers.agent.tools import ToolContext
from workers.config import AgentConfig
from workers.events import Author, Event, ToolResult, VerifyRan
from workers.publish import _body

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _checks(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    command = argv[-1]
    if command == "make test":
        if sandbox.files.get("fix.py") == b"fixed\n":
            return ExecResult(0, "4 passed\n", "", 5)
        return ExecResult(1, "", "FAILED test_parse: expected 2, got 3\n", 5)
    if command == "make lint":
        return ExecResult(0, "clean\n", "", 5)
    if command == "make hang":
        return ExecResult(124, "", "", 600_000, timed_out=True, ended_by="timeout")
    return ExecResult(2, "", f"unknown command {command}", 1)


def _run(
    book: ScriptBook, tmp_path: Path, verify: list[str], attempts: int = 3
) -> tuple[AgentResult, list[Event]]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> AgentResult:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_checks).start(SandboxSpec(source=image))
        model = OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj", verify=verify),
            config=AgentConfig(verify_attempts=attempts),
            publish=emit,
            prompt_id=1,
        )
        try:
            return await run_agent(
                ctx, model, Hooks(), [], ChatMessage(role="user", text="fix the parser"), 0.0
            )
        finally:
            await model.aclose()

    return asyncio.run(go()), events


def test_a_verify_failure_is_fixed_on_the_second_attempt(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    openai_fake.script(
        "fix the parser",
        Turn.tool("finish", summary="fixed the parser", title="Fix the parser"),
        Turn.tool("write_file", path="fix.py", content="fixed\n"),
        Turn.tool("finish", summary="fixed the parser for real", title="Fix the parser"),
    )
    result, events = _run(openai_fake, tmp_path, ["make test", "make lint"])
    assert (result.outcome, result.summary, result.draft) == (
        "done",
        "fixed the parser for real",
        False,
    )
    runs = [e for e in events if isinstance(e, VerifyRan)]
    assert [(r.round, r.passed) for r in runs] == [(1, False), (2, True)]
    assert [(c.command, c.ok) for c in runs[0].checks] == [
        ("make test", False),
        ("make lint", True),
    ]
    finishes = [e for e in events if isinstance(e, ToolResult) and e.name == "finish"]
    assert finishes[0].is_error and "expected 2, got 3" in finishes[0].output
    assert "attempt 1 of 3" in finishes[0].output and not finishes[1].is_error
    # The model read the failure before its next turn.
    assert "expected 2, got 3" in str(openai_fake.requests[1]["messages"])
    body = _body(result)
    assert body.startswith("fixed the parser for real")
    assert "| `make test` | passed |" in body and "Draft" not in body


def test_still_failing_after_the_last_attempt_is_a_draft(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    openai_fake.script(
        "fix the parser",
        Turn.tool("finish", summary="attempt one"),
        Turn.tool("finish", summary="attempt two"),
    )
    result, events = _run(openai_fake, tmp_path, ["make test", "make hang"], attempts=2)
    assert (result.outcome, result.summary, result.draft) == ("done", "attempt two", True)
    runs = [e for e in events if isinstance(e, VerifyRan)]
    assert [(r.round, r.passed) for r in runs] == [(1, False), (2, False)]
    # A command that hangs is killed at the exec timeout and counts as a failure.
    assert runs[-1].checks[1].ok is False and "killed: timeout" in runs[-1].checks[1].output
    body = _body(result)
    assert "**Draft: the repository's verify commands still fail" in body
    assert "| `make test` | failed (exit 1) |" in body and "(attempt 2)" in body


def test_no_verify_commands_finish_at_once(openai_fake: ScriptBook, tmp_path: Path) -> None:
    openai_fake.script("fix the parser", Turn.tool("finish", summary="done"))
    result, events = _run(openai_fake, tmp_path, [])
    assert (result.outcome, result.draft, result.verify_report) == ("done", False, "")
    assert not [e for e in events if isinstance(e, VerifyRan)]


def test_verify_in_the_spec_file(make_settings: Any) -> None:
    spec = parse_spec_file('verify = ["pytest -q", "ruff check ."]\n')
    assert spec.verify == ["pytest -q", "ruff check ."]
    repo = RepoSpec(name="p", url="/tmp/p").with_file(spec)
    assert repo.verify == ["pytest -q", "ruff check ."]
    assert make_settings(verify_attempts=5).agent_config().verify_attempts == 5
