"""A small plugin for the tests, loaded through `NIGHTSHIFT_PLUGINS=tests.workers.plugin_sample:…`:
it adds a tool, refuses one use of it, and listens to events (one listener raises)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workers.agent.tools import Tool, ToolContext, ToolOutput
from workers.errors import ToolError
from workers.events import Event

SEEN: list[Event] = []
"""Every event `Recorder.on_event` was given, in order (one process runs the test)."""


class CountArgs(BaseModel):
    path: str = Field(description="File relative to the repository root")


async def count_lines(ctx: ToolContext, args: CountArgs) -> ToolOutput:
    data = await ctx.sandbox.read_file(args.path)
    return ToolOutput(f"{args.path}: {len(data.splitlines())} lines")


async def explode(ctx: ToolContext, args: CountArgs) -> ToolOutput:
    raise RuntimeError("the tool broke")


class Recorder:
    name = "recorder"

    def tools(self) -> list[Tool]:
        return [
            Tool("count_lines", "Count the lines of a file.", CountArgs, count_lines),
            Tool("explode", "Always fails.", CountArgs, explode),
        ]

    async def before_tool(self, ctx: ToolContext, tool: Tool, args: dict[str, Any]) -> None:
        if tool.name == "count_lines" and args.get("path") == "SECRET.md":
            raise ToolError("count_lines may not look at SECRET.md")

    async def on_event(self, event: Event) -> None:
        SEEN.append(event)


class Flaky:
    name = "flaky"

    async def on_event(self, event: Event) -> None:
        if event.type == "sandbox_ready":
            raise RuntimeError("cannot handle sandbox_ready")


class Clashing:
    name = "clashing"

    def tools(self) -> list[Tool]:
        return [Tool("run", "A second run.", CountArgs, count_lines)]
