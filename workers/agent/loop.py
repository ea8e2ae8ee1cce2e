"""The agent loop: model turn, tool calls, repeat, until `finish`, a limit or a stop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from integrations.llm.base import (
    ModelClient,
    ModelContextOverflow,
    ModelError,
    ModelTransientError,
)
from integrations.llm.types import ChatMessage, Completion, TextChunk, ToolSpec
from workers.agent.accounting import cost_usd, parse_prices
from workers.agent.context import COMPACT_AT, compact, context_window, estimate_tokens
from workers.agent.hooks import Hooks
from workers.agent.instructions import Instructions, load, nested_for
from workers.agent.prompts import system_prompt
from workers.agent.tools import TOOLS, Finished, ToolContext, ToolOutput, call_tool
from workers.agent.verify import Verification, failure_text, run_checks
from workers.events import (
    ContextCompacted,
    ErrorRaised,
    InstructionsLoaded,
    MessageAdded,
    ModelRequest,
    ModelRetry,
    Notice,
    PromptOutcome,
    TextDelta,
    ToolCalled,
    ToolResult,
    UsageReported,
)


@dataclass
class AgentResult:
    outcome: PromptOutcome
    summary: str = ""
    title: str = ""
    steps: int = 0
    tokens: int = 0
    verify_report: str = ""
    """The verify commands and their results (Markdown), "" when the repo has none."""
    draft: bool = False
    """The verify commands still failed after the last attempt."""
    cost_usd: float = 0.0
    """Estimated spend of this prompt (NIGHTSHIFT_MODEL_PRICES)."""


class _DeltaBuffer:
    """Coalesces streamed text into events of at most ~50 ms, so clients see it live.

    A ticker flushes what is buffered even when the model pauses mid-answer.
    """

    INTERVAL = 0.05

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.parts: list[str] = []
        self.size = 0
        self.last = time.monotonic()
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _DeltaBuffer:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if kind is None or issubclass(kind, Exception):  # not on cancellation
            await self.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL)
            if self.parts and time.monotonic() - self.last >= self.INTERVAL:
                await self.flush()

    async def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= 512 or time.monotonic() - self.last >= self.INTERVAL:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if self.parts:
                text, self.parts, self.size = "".join(self.parts), [], 0
                await self.ctx.emit(TextDelta(text=text))
            self.last = time.monotonic()


@cache
def _tool_specs() -> tuple[ToolSpec, ...]:
    """The tools as the model sees them (their JSON schemas are built once per process)."""
    return tuple(t.spec() for t in TOOLS.values())


async def _one_turn(
    ctx: ToolContext, model: ModelClient, system: str, messages: list[ChatMessage]
) -> Completion:
    """Stream one model turn, retrying transient failures with jittered exponential backoff."""
    tools = list(_tool_specs())
    retry = 0
    while True:
        try:
            async with _DeltaBuffer(ctx) as buffer:
                async for item in model.stream(system, messages, tools):
                    if isinstance(item, TextChunk):
                        await buffer.add(item.text)
                    else:
                        await buffer.flush()
                        return item
            raise ModelTransientError("the model stream ended without a completion")
        except ModelTransientError as exc:
            retry += 1
            if retry > ctx.config.model_retries:
                raise
            wait = exc.retry_after
            if wait is None:
                wait = ctx.config.retry_base_s * 2 ** (retry - 1) * (0.5 + random.random())
            wait = min(wait, 60.0)
            await ctx.emit(
                ModelRetry(
                    retry=retry,
                    reason=str(exc),
                    wait_s=round(wait, 3),
                )
            )
            await asyncio.sleep(wait)


COMPACT_RETRIES = 3
"""How many times one turn compacts and retries after the provider refuses its length."""


class _Context:
    """Tracks how full the window is, from the provider's counts plus an estimate of what
    was added since, and compacts the history before it overflows."""

    def __init__(self, ctx: ToolContext, model: ModelClient, system: str) -> None:
        self.ctx, self.model, self.system = ctx, model, system
        self.window = context_window(model.name, ctx.config.context_tokens)
        self.budget = int(self.window * COMPACT_AT)
        self.counted = 0
        """Input tokens of the last request, as the provider counted them."""
        self.counted_len = 0
        """How many messages that request held."""

    def tokens(self, messages: list[ChatMessage]) -> int:
        if self.counted and self.counted_len <= len(messages):
            return self.counted + estimate_tokens("", messages[self.counted_len :])
        return estimate_tokens(self.system, messages)

    def reported(self, input_tokens: int, messages: list[ChatMessage]) -> None:
        self.counted, self.counted_len = input_tokens, len(messages)

    async def fit(self, messages: list[ChatMessage], refused: bool) -> list[ChatMessage]:
        before = self.tokens(messages)
        if not refused and before <= self.budget:
            return messages
        # After a refusal the provider's count is unknown: aim well below the window.
        budget = self.budget if not refused else int(self.budget * 0.75)
        out, elided, summary = await compact(self.model, self.system, messages, budget, refused)
        self.counted = self.counted_len = 0
        await self.ctx.emit(
            ContextCompacted(
                reason="refused" if refused else "threshold",
                tokens_before=before,
                tokens_after=self.tokens(out),
                window=self.window,
                outputs_elided=elided,
                summary=summary,
            )
        )
        return out


PATH_TOOLS = frozenset({"read_file", "write_file", "edit_file", "list_files"})
"""Tools whose `path` puts the agent under a directory (and its nested AGENTS.md)."""


def _nested_name(shown: str) -> str:
    return shown.partition("[Instructions from ")[2].partition(",")[0]


async def _instructions(ctx: ToolContext) -> Instructions:
    cfg = ctx.config
    skills_dir = Path(cfg.skills_dir) if cfg.skills_dir else None
    found = await load(ctx.sandbox, skills_dir, cfg.instructions_max_chars)
    for source, why in found.invalid:
        await ctx.emit(Notice(message=f"skill {source} skipped: {why}"))
    if found.agents or found.skills:
        await ctx.emit(
            InstructionsLoaded(
                agents_md=["AGENTS.md"] if found.agents else [],
                skills=sorted(found.skills),
            )
        )
    return found


async def run_agent(
    ctx: ToolContext,
    model: ModelClient,
    hooks: Hooks,
    history: list[ChatMessage],
    user_message: ChatMessage,
    prompt_received_at: float,
    spent_usd: float = 0.0,
) -> AgentResult:
    """Run one prompt. `spent_usd` is what the session spent before it (for the budget)."""
    cfg = ctx.config
    ctx.instructions = await _instructions(ctx)
    system = system_prompt(ctx.repo, ctx.author, ctx.instructions) + hooks.prompt(ctx)
    messages = [*history, user_message]
    window = _Context(ctx, model, system)
    verification = Verification()
    prices = parse_prices(cfg.model_prices)
    cost = 0.0
    await ctx.emit(MessageAdded(message=user_message))
    tokens = 0
    step = 0
    last_text = ""
    while True:
        if step >= cfg.max_steps:
            await ctx.emit(
                ErrorRaised(
                    code="step_limit",
                    message=f"stopped after {cfg.max_steps} model turns (NIGHTSHIFT_MAX_STEPS)",
                )
            )
            return AgentResult("limit", last_text, steps=step, tokens=tokens, cost_usd=cost)
        if tokens >= cfg.token_budget:
            await ctx.emit(
                ErrorRaised(
                    code="token_budget",
                    message=f"stopped after spending {tokens} tokens (NIGHTSHIFT_TOKEN_BUDGET={cfg.token_budget})",
                )
            )
            return AgentResult("limit", last_text, steps=step, tokens=tokens, cost_usd=cost)
        budget = cfg.session_budget_usd
        if budget is not None and spent_usd + cost >= budget:
            await ctx.emit(
                ErrorRaised(
                    code="session_budget",
                    message=f"stopped: the session's estimated cost ${spent_usd + cost:.4f} "
                    f"reached its budget of ${budget:.2f} (NIGHTSHIFT_SESSION_BUDGET_USD)",
                )
            )
            return AgentResult("limit", last_text, steps=step, tokens=tokens, cost_usd=cost)
        step += 1
        await ctx.emit(
            ModelRequest(
                model=model.name,
                step=step,
                ms_since_prompt=int((time.time() - prompt_received_at) * 1000),
            )
        )
        try:
            refusals = 0
            messages = await window.fit(messages, refused=False)
            while True:
                try:
                    completion = await _one_turn(ctx, model, system, messages)
                    break
                except ModelContextOverflow:
                    refusals += 1
                    if refusals > COMPACT_RETRIES:
                        raise
                    messages = await window.fit(messages, refused=True)
        except ModelError as exc:
            await ctx.emit(
                ErrorRaised(
                    code="model_error",
                    message=str(exc),
                )
            )
            return AgentResult("failed", str(exc), steps=step, tokens=tokens, cost_usd=cost)
        tokens += completion.input_tokens + completion.output_tokens
        window.reported(completion.input_tokens, messages)
        turn_cost = cost_usd(
            prices,
            model.name,
            completion.input_tokens,
            completion.output_tokens,
            completion.cached_tokens,
        )
        cost += turn_cost or 0.0
        await ctx.emit(
            UsageReported(
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cached_tokens=completion.cached_tokens,
                cost_usd=turn_cost,
            )
        )
        message = completion.message
        messages.append(message)
        await ctx.emit(MessageAdded(message=message))
        if message.text.strip():
            last_text = message.text.strip()
        if not message.tool_calls:
            return AgentResult("done", last_text, steps=step, tokens=tokens, cost_usd=cost)
        finished: Finished | None = None
        for call in message.tool_calls:
            await ctx.emit(
                ToolCalled(
                    call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                )
            )
            started = time.monotonic()
            tool = TOOLS.get(call.name)
            if finished is not None:
                out = ToolOutput("not run: `finish` was already called", is_error=True)
            elif tool is None:
                out = ToolOutput(
                    f"unknown tool {call.name!r}; available: {', '.join(TOOLS)}", is_error=True
                )
            else:
                out = await call_tool(ctx, tool, call.arguments, hooks)
                if out.finished is not None and not out.is_error and ctx.repo.verify:
                    ran = await run_checks(ctx, verification)
                    await ctx.emit(ran)
                    if not ran.passed and ran.round < cfg.verify_attempts:
                        out = ToolOutput(failure_text(ran), is_error=True)
                path = call.arguments.get("path")
                if call.name in PATH_TOOLS and isinstance(path, str) and not out.is_error:
                    # A listed directory is itself "under" its own AGENTS.md.
                    target = path.rstrip("/") + "/_" if call.name == "list_files" else path
                    nested = await nested_for(
                        ctx.sandbox, ctx.instructions, target, cfg.instructions_max_chars
                    )
                    if nested:
                        out = replace(out, text=out.text + nested)
                        await ctx.emit(InstructionsLoaded(agents_md=[_nested_name(nested)]))
            await ctx.emit(
                ToolResult(
                    call_id=call.id,
                    name=call.name,
                    output=out.text,
                    is_error=out.is_error,
                    exit_code=out.exit_code,
                    ms=int((time.monotonic() - started) * 1000),
                )
            )
            messages.append(
                ChatMessage(role="tool", text=out.text, tool_call_id=call.id, is_error=out.is_error)
            )
            if out.finished is not None and not out.is_error and finished is None:
                finished = out.finished
        if finished is not None:
            return AgentResult(
                "done",
                finished.summary,
                finished.title,
                step,
                tokens,
                verify_report=verification.report(),
                draft=not verification.passed,
                cost_usd=cost,
            )
