"""The agent loop: model turn, tool calls, repeat, until `finish`, a limit or a stop."""

from __future__ import annotations

import asyncio
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
from workers.agent.calls import run_calls
from workers.agent.context import COMPACT_AT, compact, context_window, estimate_tokens
from workers.agent.hooks import Hooks
from workers.agent.instructions import Instructions, load
from workers.agent.pages import capture_pages
from workers.agent.prompts import system_prompt
from workers.agent.resume import Checkpoint, Resumed, resume
from workers.agent.tools import TOOLS, Finished, Tool, ToolContext
from workers.agent.verify import Verification
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
    pages: str = ""
    """The repo's pages as captured after `finish` (Markdown), "" when it names none."""


class _DeltaBuffer:
    """Coalesces streamed text into events of at most ~50 ms, so clients see it live.

    Text that waits in the buffer is flushed by a timer even when the model pauses mid-answer;
    the timer is armed only while text waits, so a session whose model is thinking costs no
    wake-ups (hundreds of sessions would otherwise tick twenty times a second each).
    """

    INTERVAL = 0.05

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.parts: list[str] = []
        self.size = 0
        self.last = time.monotonic()
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._due: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _DeltaBuffer:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._disarm()
        due, self._due = self._due, None
        if kind is None or issubclass(kind, Exception):  # not on cancellation
            if due is not None:
                await due
            await self.flush()
        elif due is not None:
            due.cancel()

    async def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        waited = time.monotonic() - self.last
        if self.size >= 512 or waited >= self.INTERVAL:
            await self.flush()
        elif self._timer is None:
            # Text that arrives while a timed flush is on its way is already INTERVAL old, so
            # it is flushed above: one timer at a time is enough.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.INTERVAL - waited, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._due = asyncio.get_running_loop().create_task(self.flush())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def flush(self) -> None:
        async with self._lock:
            self._disarm()
            if self.parts:
                text, self.parts, self.size = "".join(self.parts), [], 0
                await self.ctx.emit(TextDelta(text=text))
            self.last = time.monotonic()


@cache
def _builtin_specs() -> tuple[ToolSpec, ...]:
    """The built-in tools as the model sees them (their schemas are built once per process)."""
    return tuple(t.spec() for t in TOOLS.values())


def _tool_specs(tools: dict[str, Tool]) -> list[ToolSpec]:
    extra = [t.spec() for name, t in tools.items() if name not in TOOLS]
    return [*_builtin_specs(), *extra]


async def _one_turn(
    ctx: ToolContext,
    model: ModelClient,
    system: str,
    messages: list[ChatMessage],
    tools: list[ToolSpec],
) -> Completion:
    """Stream one model turn, retrying transient failures with jittered exponential backoff."""
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


async def _instructions(ctx: ToolContext, announce: bool) -> Instructions:
    """AGENTS.md and skills; `announce` is False on a resumed attempt (said once a prompt)."""
    cfg = ctx.config
    skills_dir = Path(cfg.skills_dir) if cfg.skills_dir else None
    found = await load(ctx.sandbox, skills_dir, cfg.instructions_max_chars)
    if not announce:
        return found
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


@dataclass
class _Run:
    """What one attempt of a prompt carries from turn to turn."""

    messages: list[ChatMessage]
    verification: Verification
    step: int = 0
    tokens: int = 0
    cost: float = 0.0
    last_text: str = ""

    def result(self, outcome: PromptOutcome, summary: str | None = None) -> AgentResult:
        text = self.last_text if summary is None else summary
        return AgentResult(outcome, text, steps=self.step, tokens=self.tokens, cost_usd=self.cost)

    def finished(self, done: Finished) -> AgentResult:
        return AgentResult(
            "done",
            done.summary,
            done.title,
            self.step,
            self.tokens,
            verify_report=self.verification.report(),
            draft=not self.verification.passed,
            cost_usd=self.cost,
        )


async def run_agent(
    ctx: ToolContext,
    model: ModelClient,
    hooks: Hooks,
    history: list[ChatMessage],
    user_message: ChatMessage,
    prompt_received_at: float,
    spent_usd: float = 0.0,
    *,
    resumed: Resumed | None = None,
    checkpoint: Checkpoint | None = None,
    kept_sandbox: bool = False,
) -> AgentResult:
    """Run one prompt, or continue it from `resumed` (what its earlier attempts stored).

    `spent_usd` is what the session spent before this attempt (for the budget); `checkpoint`
    is called after every turn whose tool calls wrote to the workspace.
    """
    cfg = ctx.config
    ctx.instructions = await _instructions(ctx, announce=resumed is None)
    system = system_prompt(ctx.repo, ctx.author, ctx.instructions) + hooks.prompt(ctx)
    tools = {**TOOLS, **{t.name: t for t in hooks.tools}}
    specs = _tool_specs(tools)
    if resumed is None:
        run = _Run([*history, user_message], Verification())
        await ctx.emit(MessageAdded(message=user_message))
    else:
        run = _Run([*history, *resumed.messages], resumed.verification, resumed.steps)
        run.tokens = resumed.tokens
        finished, more, told = await resume(
            ctx, hooks, tools, resumed, run.verification, checkpoint, kept_sandbox
        )
        run.messages += more
        system += f"\n\n{told}\n"
        if finished is not None:
            return run.finished(finished)
    window = _Context(ctx, model, system)
    prices = parse_prices(cfg.model_prices)
    while True:
        if run.step >= cfg.max_steps:
            await ctx.emit(
                ErrorRaised(
                    code="step_limit",
                    message=f"stopped after {cfg.max_steps} model turns (NIGHTSHIFT_MAX_STEPS)",
                )
            )
            return run.result("limit")
        if run.tokens >= cfg.token_budget:
            await ctx.emit(
                ErrorRaised(
                    code="token_budget",
                    message=f"stopped after spending {run.tokens} tokens (NIGHTSHIFT_TOKEN_BUDGET={cfg.token_budget})",
                )
            )
            return run.result("limit")
        budget = cfg.session_budget_usd
        if budget is not None and spent_usd + run.cost >= budget:
            await ctx.emit(
                ErrorRaised(
                    code="session_budget",
                    message=f"stopped: the session's estimated cost ${spent_usd + run.cost:.4f} "
                    f"reached its budget of ${budget:.2f} (NIGHTSHIFT_SESSION_BUDGET_USD)",
                )
            )
            return run.result("limit")
        run.step += 1
        await ctx.emit(
            ModelRequest(
                model=model.name,
                step=run.step,
                ms_since_prompt=int((time.time() - prompt_received_at) * 1000),
            )
        )
        try:
            refusals = 0
            run.messages = await window.fit(run.messages, refused=False)
            while True:
                try:
                    completion = await _one_turn(ctx, model, system, run.messages, specs)
                    break
                except ModelContextOverflow:
                    refusals += 1
                    if refusals > COMPACT_RETRIES:
                        raise
                    run.messages = await window.fit(run.messages, refused=True)
        except ModelError as exc:
            await ctx.emit(ErrorRaised(code="model_error", message=str(exc)))
            return run.result("failed", str(exc))
        run.tokens += completion.input_tokens + completion.output_tokens
        window.reported(completion.input_tokens, run.messages)
        turn_cost = cost_usd(
            prices,
            model.name,
            completion.input_tokens,
            completion.output_tokens,
            completion.cached_tokens,
        )
        run.cost += turn_cost or 0.0
        await ctx.emit(
            UsageReported(
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                cached_tokens=completion.cached_tokens,
                cost_usd=turn_cost,
            )
        )
        message = completion.message
        run.messages.append(message)
        await ctx.emit(MessageAdded(message=message))
        if message.text.strip():
            run.last_text = message.text.strip()
        if not message.tool_calls:
            return run.result("done")
        done = await run_calls(ctx, hooks, tools, message.tool_calls, run.verification)
        run.messages += done.messages
        if done.wrote and checkpoint is not None:
            await checkpoint()
        if done.finished is not None:
            pages = await capture_pages(ctx)
            return replace(run.finished(done.finished), pages=pages)
