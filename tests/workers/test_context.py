"""Context that never overflows: a long task against model servers that enforce a window and
refuse longer requests with each provider's real error, through the official SDKs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.anthropic_messages import AnthropicModel
from integrations.llm.base import ModelClient, ModelContextOverflow
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage, ToolCallRecord
from tests.fakes.llm import ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.context import context_window, elide_tool_outputs
from workers.agent.hooks import Hooks
from workers.agent.loop import AgentResult, run_agent
from workers.agent.tools import ToolContext
from workers.config import AgentConfig
from workers.events import Author, ContextCompacted, Event, ToolResult

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")
WINDOW = 24_000
TASK = "refactor the parser in parser.py and keep the tests green"
STEPS = 14


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _big_output(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    return ExecResult(0, "x" * 90_000, "", 1)


def _script(book: ScriptBook) -> None:
    turns = [Turn.tool("write_file", path="parser.py", content="def parse(): ...\n")]
    # Long reasoning in every turn: eliding old outputs alone cannot keep up, so older turns
    # must be summarised too.
    notes = "considering the next build step. " * 250
    turns += [Turn.tool("run", text=notes, command=f"./build --step {n}") for n in range(STEPS - 2)]
    turns.append(Turn.tool("finish", summary="parser refactored", title="Refactor the parser"))
    book.script("refactor the parser", *turns)
    book.context_window = WINDOW


def _run(model: ModelClient, tmp_path: Path) -> tuple[AgentResult, list[Event]]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> AgentResult:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_big_output).start(SandboxSpec(source=image))
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj"),
            config=AgentConfig(context_tokens=WINDOW, retry_base_s=0.01),
            publish=emit,
            prompt_id=1,
        )
        try:
            return await run_agent(
                ctx, model, Hooks(), [], ChatMessage(role="user", text=TASK), 0.0
            )
        finally:
            await model.aclose()

    return asyncio.run(go()), events


def _check(result: AgentResult, events: list[Event], book: ScriptBook) -> None:
    assert (result.outcome, result.summary) == ("done", "parser refactored")
    runs = [e for e in events if isinstance(e, ToolResult) and e.name == "run"]
    assert len(runs) == STEPS - 2  # every step ran once: no turn was replayed
    compactions = [e for e in events if isinstance(e, ContextCompacted)]
    assert compactions, "a 14-step task with 30 KB outputs must compact a 24k-token window"
    assert all(c.tokens_after < c.tokens_before for c in compactions)
    summaries = [c.summary for c in compactions if c.summary]
    assert summaries and TASK in summaries[-1] and "parser.py" in summaries[-1]
    # No request the model answered exceeded the window, and the task stayed verbatim in each.
    answered = [b for b in book.requests if book.tokens(b) <= WINDOW]
    assert all(TASK in str(b["messages"]) for b in answered)


def test_long_task_finishes_on_openai(openai_fake: ScriptBook, tmp_path: Path) -> None:
    _script(openai_fake)
    model = OpenAIChatModel("gpt-test", api_key="k", base_url=openai_fake.url)  # type: ignore[attr-defined]
    result, events = _run(model, tmp_path)
    _check(result, events, openai_fake)


def test_long_task_finishes_on_anthropic(anthropic_fake: ScriptBook, tmp_path: Path) -> None:
    _script(anthropic_fake)
    model = AnthropicModel("claude-test", api_key="k", base_url=anthropic_fake.url)  # type: ignore[attr-defined]
    result, events = _run(model, tmp_path)
    _check(result, events, anthropic_fake)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refusal_compacts_and_retries(
    provider: str, openai_fake: ScriptBook, anthropic_fake: ScriptBook, tmp_path: Path
) -> None:
    """The configured window is too optimistic: the provider refuses, the loop compacts and
    retries instead of failing the session."""
    book = openai_fake if provider == "openai" else anthropic_fake
    _script(book)
    model: ModelClient
    if provider == "openai":
        model = OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
    else:
        model = AnthropicModel("claude-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> AgentResult:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_big_output).start(SandboxSpec(source=image))
        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),
            author=AUTHOR,
            repo=RepoSpec(name="proj", url="/tmp/proj"),
            config=AgentConfig(context_tokens=10 * WINDOW, retry_base_s=0.01),
            publish=emit,
            prompt_id=1,
        )
        try:
            return await run_agent(
                ctx, model, Hooks(), [], ChatMessage(role="user", text=TASK), 0.0
            )
        finally:
            await model.aclose()

    result = asyncio.run(go())
    assert result.outcome == "done"
    assert book.refusals >= 1
    refused = [e for e in events if isinstance(e, ContextCompacted) and e.reason == "refused"]
    assert len(refused) >= 1
    assert not [e for e in events if e.type == "error"]


def test_refusal_error_shapes_map_to_overflow(
    openai_fake: ScriptBook, anthropic_fake: ScriptBook
) -> None:
    for book in (openai_fake, anthropic_fake):
        book.context_window = 10
    models: list[ModelClient] = [
        OpenAIChatModel("gpt-test", api_key="k", base_url=openai_fake.url),  # type: ignore[attr-defined]
        AnthropicModel("claude-test", api_key="k", base_url=anthropic_fake.url),  # type: ignore[attr-defined]
    ]

    async def go(model: ModelClient) -> None:
        try:
            async for _ in model.stream("s", [ChatMessage(role="user", text="x" * 400)], []):
                pass
        finally:
            await model.aclose()

    for model in models:
        with pytest.raises(ModelContextOverflow):
            asyncio.run(go(model))


def test_windows_and_elision() -> None:
    assert context_window("openai:gpt-4o-2024-08-06", None) == 128_000
    assert context_window("anthropic:claude-sonnet-4-5-20250929", None) == 200_000
    assert context_window("openai:gpt-4o", 5000) == 5000
    history = [ChatMessage(role="user", text=TASK)]
    for n in range(6):
        history.append(
            ChatMessage(role="assistant", tool_calls=[ToolCallRecord(id=f"c{n}", name="run")])
        )
        history.append(ChatMessage(role="tool", text="y" * 1000, tool_call_id=f"c{n}"))
    out, elided = elide_tool_outputs(history, keep_last=4)
    assert elided == 4 and out[0].text == TASK
    assert [m.text for m in out[-4:]] == [m.text for m in history[-4:]]
    assert "elided" in out[2].text and len(out) == len(history)


def test_the_window_setting_reaches_the_agent(make_settings: Any) -> None:
    settings = make_settings(model_context_tokens=50_000)
    assert settings.agent_config().context_tokens == 50_000
    assert make_settings().agent_config().context_tokens is None
