"""Resuming a prompt from what a dead attempt stored: the events of a whole run, cut where a
worker could have died, are rebuilt and continued through the agent loop (fake sandbox, the
fake model behind the OpenAI SDK). The end-to-end kill of a real worker is in
test_distributed.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage
from tests.fakes.llm import ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.hooks import Hooks
from workers.agent.loop import AgentResult, run_agent
from workers.agent.resume import RESUME_EVENT_TYPES, Resumed, rebuild
from workers.agent.tools import TOOLS, ToolContext
from workers.config import AgentConfig
from workers.events import (
    Author,
    Event,
    MessageAdded,
    ModelRequest,
    RunResumed,
    ToolCalled,
    ToolResult,
)

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")
PROMPT = "resume me"


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _writes(name: str) -> bool:
    return TOOLS[name].writes


def _agent(
    book: ScriptBook, tmp_path: Path, resumed: Resumed | None = None
) -> tuple[AgentResult, list[Event], list[str], int]:
    """One attempt; returns its result, its events, the commands run and checkpoints taken."""
    events: list[Event] = []
    commands: list[str] = []
    checkpoints: list[int] = []

    def handler(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
        commands.append(argv[-1])
        return ExecResult(0, "ran\n", "", 1)

    async def emit(event: Event) -> None:
        events.append(event)

    async def checkpoint() -> None:
        checkpoints.append(len(events))

    async def go() -> AgentResult:
        sandbox = await FakeBackend(handler).start(SandboxSpec(source=fake_image(tmp_path)))
        model = OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj"),
            config=AgentConfig(),
            publish=emit,
            prompt_id=1,
            attempt=1 if resumed is None else 2,
        )
        try:
            return await run_agent(
                ctx,
                model,
                Hooks(),
                [],
                ChatMessage(role="user", text=PROMPT),
                0.0,
                resumed=resumed,
                checkpoint=checkpoint,
            )
        finally:
            await model.aclose()

    result = asyncio.run(go())
    return result, events, commands, len(checkpoints)


def _stored(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type in RESUME_EVENT_TYPES]


def _cut_after(events: list[Event], predicate: Any) -> list[Event]:
    """The events a worker that died right after the first event matching `predicate` left."""
    index = next(i for i, e in enumerate(events) if predicate(e))
    return _stored(events[: index + 1])


def _script(book: ScriptBook) -> None:
    book.script(
        PROMPT,
        Turn.tool("write_file", "A file.", path="A.md", content="a\n"),
        Turn.tool("run", "A command.", command="echo hi >> B.log"),
        Turn.tool("finish", summary="All done.", title="Done"),
    )


def test_a_call_cut_short_runs_again_and_nothing_before_it(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _script(openai_fake)
    first, events, commands, _ = _agent(openai_fake, tmp_path)
    assert first.outcome == "done" and commands == ["echo hi >> B.log"]
    # The worker died while `run` ran, and before any checkpoint was stored.
    left = _cut_after(events, lambda e: isinstance(e, ToolCalled) and e.name == "run")
    left = [e for e in left if e.type != "snapshot"]
    resumed = rebuild(left, _writes)
    assert resumed is not None and resumed.steps == 2
    [run_call] = resumed.pending
    assert run_call.name == "run" and resumed.announced == {run_call.id}
    assert [c.name for c in resumed.unsaved] == ["write_file"]
    asked = len(openai_fake.requests)

    result, again, commands, checkpoints = _agent(openai_fake, tmp_path, resumed)
    assert (result.outcome, result.summary, result.title) == ("done", "All done.", "Done")
    assert result.steps == 3
    # Only the call cut short ran again; it was not announced a second time.
    assert commands == ["echo hi >> B.log"]
    assert [e.name for e in again if isinstance(e, ToolCalled)] == ["finish"]
    results = [e for e in again if isinstance(e, ToolResult)]
    assert [r.name for r in results] == ["run", "finish"] and results[0].call_id == run_call.id
    assert checkpoints == 1  # after the re-run command: it may have written
    # The user's message is not stored again; the model turns go on at 3.
    assert not [e for e in again if isinstance(e, MessageAdded) and e.message.role == "user"]
    assert [e.step for e in again if isinstance(e, ModelRequest)] == [3]
    [marker] = [e for e in again if isinstance(e, RunResumed)]
    assert (marker.from_turn, marker.rerun) == (3, [run_call.id])
    assert marker.unsaved == [resumed.unsaved[0].id]
    assert again.index(marker) < again.index(results[0])
    # The model saw the whole conversation and the note, once more.
    request = openai_fake.requests[asked]
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
    system = request["messages"][0]["content"]
    assert "stopped unexpectedly after your turn 2" in system
    assert "`run`" in system and "may be missing" in system and "`write_file`" in system
    assert marker.note in system


def test_a_finish_that_returned_ends_the_resumed_run_without_the_model(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _script(openai_fake)
    _, events, _, _ = _agent(openai_fake, tmp_path)
    left = _cut_after(events, lambda e: isinstance(e, ToolResult) and e.name == "finish")
    resumed = rebuild(left, _writes)
    assert resumed is not None and resumed.pending == [] and resumed.checkpointed is False
    asked = len(openai_fake.requests)
    result, again, commands, _ = _agent(openai_fake, tmp_path, resumed)
    assert (result.outcome, result.summary, result.title) == ("done", "All done.", "Done")
    assert len(openai_fake.requests) == asked and commands == []
    assert [e.type for e in again] == ["run_resumed"]


def test_a_run_that_died_in_its_first_turn_starts_that_turn_again(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    _script(openai_fake)
    _, events, _, _ = _agent(openai_fake, tmp_path)
    left = _cut_after(events, lambda e: isinstance(e, MessageAdded))
    resumed = rebuild(left, _writes)
    assert resumed is not None and resumed.steps == 0 and resumed.pending == []
    assert rebuild([], _writes) is None  # nothing stored: a plain first run
    asked = len(openai_fake.requests)
    result, again, commands, checkpoints = _agent(openai_fake, tmp_path, resumed)
    assert result.outcome == "done" and commands == ["echo hi >> B.log"]
    assert [e.step for e in again if isinstance(e, ModelRequest)] == [1, 2, 3]
    assert checkpoints == 2  # after write_file and after run
    system = openai_fake.requests[asked]["messages"][0]["content"]
    assert "stopped unexpectedly before your first answer" in system


def _checkpoints(tmp_path: Path, every_s: float) -> list[Event]:
    """Three checkpoints asked in a row, on a held sandbox, then one on the next sandbox."""
    from images.starter import Acquired
    from workers.control import PromptJob
    from workers.session_sandbox import SessionSandbox

    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> None:
        backend = FakeBackend(lambda *_: ExecResult(0, "", "", 1))
        image = fake_image(tmp_path)
        held = SessionSandbox("s1", None, emit, every_s)  # type: ignore[arg-type]  # no acquire
        job = PromptJob(id=7, text="t", author=AUTHOR, created_at=0.0, attempt=2)
        for _ in range(2):
            held.acquired = Acquired(await backend.start(SandboxSpec(source=image)), "image", image)
            await held.checkpoint(job)
            await held.checkpoint(job)
            await held.release(snapshot=False)

    asyncio.run(go())
    return events


def test_checkpoints_are_spaced_by_the_setting(tmp_path: Path) -> None:
    spaced = _checkpoints(tmp_path, 3600)
    # The first of each sandbox is always taken; a second within the interval is not.
    assert [(e.type, e.prompt_id, e.attempt) for e in spaced] == [("snapshot", 7, 2)] * 2
    assert len(_checkpoints(tmp_path, 0)) == 4
