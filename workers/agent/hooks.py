"""Hooks around every tool call and event. Built-in behaviour (redaction, waiting for the git
sync) uses the same interface a plugin would.

A `before_tool` hook may wait, or raise `ToolError` to refuse the call; an `after_tool` hook
returns the (possibly rewritten) output; an `on_event` hook sees every event of the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from workers.redact import Redactor

if TYPE_CHECKING:
    from workers.agent.tools import Tool, ToolContext, ToolOutput
    from workers.events import Event

BeforeTool = Callable[["ToolContext", "Tool", dict[str, Any]], Awaitable[None]]
AfterTool = Callable[["ToolContext", "Tool", dict[str, Any], "ToolOutput"], Awaitable["ToolOutput"]]
PromptAddition = Callable[["ToolContext"], str]
OnEvent = Callable[["Event"], Awaitable[None]]


@dataclass
class Hooks:
    before_tool: list[BeforeTool] = field(default_factory=list)
    after_tool: list[AfterTool] = field(default_factory=list)
    system_prompt: list[PromptAddition] = field(default_factory=list)
    """Text added to the system prompt (plugins)."""
    tools: list[Tool] = field(default_factory=list)
    """Tools added to the built-in ones (plugins); they run under the same hooks."""
    on_event: list[OnEvent] = field(default_factory=list)
    """Called with every event the run emits, after it is published (plugins)."""

    def prompt(self, ctx: ToolContext) -> str:
        parts = [text for add in self.system_prompt if (text := add(ctx))]
        return "\n\n" + "\n".join(parts) + "\n" if parts else ""

    async def before(self, ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        for hook in self.before_tool:
            await hook(ctx, tool, args)

    async def after(
        self, ctx: ToolContext, tool: Tool, args: dict[str, Any], out: ToolOutput
    ) -> ToolOutput:
        for hook in self.after_tool:
            out = await hook(ctx, tool, args, out)
        return out


def redact_output(redactor: Redactor) -> AfterTool:
    """Built-in: strip credentials from whatever a tool returns before the model sees it."""

    async def hook(
        ctx: ToolContext, tool: Tool, args: dict[str, Any], out: ToolOutput
    ) -> ToolOutput:
        return replace(out, text=redactor.text(out.text))

    return hook


def wait_for_sync(done: asyncio.Event) -> BeforeTool:
    """Built-in: tools that write (`Tool.writes`) wait until the git sync has finished, so no
    write lands on a stale tree; reads run at once."""

    async def hook(ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        if tool.writes and not done.is_set():
            await done.wait()

    return hook
