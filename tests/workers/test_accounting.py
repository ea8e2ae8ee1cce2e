"""Usage and estimated cost per model turn, and the per-session budget, through the agent loop
with both providers' fakes and the official SDKs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.base import ExecResult, SandboxSpec
from images.sandboxes.fake import FakeBackend, FakeSandbox
from images.spec import RepoSpec
from integrations.llm.anthropic_messages import AnthropicModel
from integrations.llm.base import ModelClient
from integrations.llm.openai_chat import OpenAIChatModel
from integrations.llm.types import ChatMessage
from tests.factories import ApiClient, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.workers.agentkit import fake_image
from workers.agent.accounting import cost_usd, parse_prices
from workers.agent.hooks import Hooks
from workers.agent.loop import AgentResult, run_agent
from workers.agent.tools import ToolContext
from workers.config import AgentConfig
from workers.events import Author, ErrorRaised, Event, UsageReported

AUTHOR = Author(id=1, login="alice", name="Alice", email="alice@example.com")
PRICES = "gpt-test=2/8/0.5,claude-test=3/15/0.3"


class _UnusedControl:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"control plane used: {name}")


def _none(sandbox: FakeSandbox, argv: Any, cwd: str) -> ExecResult:
    return ExecResult(0, "ok\n", "", 1)


def _run(
    model: ModelClient, tmp_path: Path, config: AgentConfig, spent: float = 0.0
) -> tuple[AgentResult, list[Event]]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def go() -> AgentResult:
        image = fake_image(tmp_path)
        sandbox = await FakeBackend(_none).start(SandboxSpec(source=image))
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
                ctx,
                model,
                Hooks(),
                [],
                ChatMessage(role="user", text="count the cost"),
                0.0,
                spent_usd=spent,
            )
        finally:
            await model.aclose()

    return asyncio.run(go()), events


def _script(book: ScriptBook) -> None:
    book.script(
        "count the cost",
        Turn.tool("run", command="echo 1"),
        Turn.tool("run", command="echo 2"),
        Turn.tool("finish", summary="counted"),
    )
    book.cached_tokens = 40


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_usage_events_carry_cached_tokens_and_cost(
    provider: str, openai_fake: ScriptBook, anthropic_fake: ScriptBook, tmp_path: Path
) -> None:
    book = openai_fake if provider == "openai" else anthropic_fake
    _script(book)
    model: ModelClient = (
        OpenAIChatModel("gpt-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
        if provider == "openai"
        else AnthropicModel("claude-test", api_key="k", base_url=book.url)  # type: ignore[attr-defined]
    )
    result, events = _run(model, tmp_path, AgentConfig(model_prices=PRICES))
    usage = [e for e in events if isinstance(e, UsageReported)]
    assert len(usage) == 3
    # Both providers report 100 input tokens of which 40 were cached, and 20 output.
    assert {(u.input_tokens, u.cached_tokens, u.output_tokens) for u in usage} == {(100, 40, 20)}
    rate_in, rate_out, rate_cached = (2, 8, 0.5) if provider == "openai" else (3, 15, 0.3)
    each = (60 * rate_in + 40 * rate_cached + 20 * rate_out) / 1_000_000
    assert all(u.cost_usd == pytest.approx(each) for u in usage)
    assert result.cost_usd == pytest.approx(3 * each)


def test_the_session_budget_stops_the_run(openai_fake: ScriptBook, tmp_path: Path) -> None:
    _script(openai_fake)
    model = OpenAIChatModel("gpt-test", api_key="k", base_url=openai_fake.url)  # type: ignore[attr-defined]
    each = (60 * 2 + 40 * 0.5 + 20 * 8) / 1_000_000
    # Earlier prompts of the session spent almost all of it: one turn crosses the line.
    config = AgentConfig(model_prices=PRICES, session_budget_usd=0.01)
    result, events = _run(model, tmp_path, config, spent=0.01 - each * 1.5)
    assert result.outcome == "limit" and result.steps == 2
    errors = [e for e in events if isinstance(e, ErrorRaised)]
    assert [e.code for e in errors] == ["session_budget"]
    assert "NIGHTSHIFT_SESSION_BUDGET_USD" in errors[0].message and "$0.01" in errors[0].message


def test_unpriced_models_have_no_cost_and_bad_prices_are_refused(make_settings: Any) -> None:
    prices = parse_prices(PRICES)
    assert cost_usd(prices, "openai:gpt-other", 100, 10, 0) is None
    assert cost_usd(prices, "openai:gpt-test-2025", 1_000_000, 0, 0) == 2.0
    for bad, why in [
        ("gpt=2", "model=input/output"),
        ("gpt=a/b", "must be numbers"),
        ("gpt=-1/2", ">= 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_prices(bad)
    with pytest.raises(ValueError, match="NIGHTSHIFT_MODEL_PRICES"):
        make_settings(model_prices="gpt=2")
    config = make_settings(model_prices=PRICES, session_budget_usd=5).agent_config()
    assert (config.model_prices, config.session_budget_usd) == (PRICES, 5)


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    # Each fake turn is 100 input + 20 output tokens: $0.12 at these prices.
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        model_prices="fake-model=1000/1000",
        session_budget_usd=0.2,
    )


@pytest.mark.slow
def test_the_budget_counts_the_whole_session_across_prompts_and_runners(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    api.add_repo(repo)
    openai_fake.script(
        "first task",
        Turn.tool("write_file", path="A.md", content="a\n"),
        Turn.tool("finish", summary="done"),
    )
    openai_fake.script("second task", Turn.tool("finish", summary="never asked"))
    session = api.create("proj", "first task")
    api.wait_status(session["id"], "finished", "failed", timeout=60)
    first = api.events(session["id"])
    spent = sum(e["cost_usd"] for e in first if e["type"] == "usage")
    assert spent == pytest.approx(0.24)  # under the budget before its second turn, over after
    asked = len(openai_fake.requests)
    # The follow-up runs on a new runner (no idle runner is kept): the spend comes from the
    # session's stored usage, so the budget stops it before its first model turn.
    r = api.http.post(f"/api/sessions/{session['id']}/prompts", json={"text": "second task"})
    assert r.status_code in (200, 201, 202), r.text
    wait_for(
        lambda: any(
            e["type"] == "prompt_finished" for e in api.events(session["id"], first[-1]["id"])
        ),
        60,
        "the follow-up to finish",
    )
    later = api.events(session["id"], first[-1]["id"])
    errors = [e for e in later if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["session_budget"], later
    assert "$0.2400" in errors[0]["message"]
    assert len(openai_fake.requests) == asked
    assert not [e for e in later if e["type"] == "model_request"]
