"""One turn's tool calls: announce, run under the hooks, verify at `finish`, report.

Shared by the loop's ordinary turns and by a resumed run, which re-runs the calls of the last
turn that had not returned (announcing only those whose `tool_call` event was never stored).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace

from integrations.llm.types import ChatMessage, ToolCallRecord
from workers.agent.hooks import Hooks
from workers.agent.instructions import nested_for
from workers.agent.tools import Finished, Tool, ToolContext, ToolOutput, call_tool
from workers.agent.verify import Verification, failure_text, run_checks
from workers.events import InstructionsLoaded, ToolCalled, ToolResult

PATH_TOOLS = frozenset({"read_file", "write_file", "edit_file", "list_files"})
"""Tools whose `path` puts the agent under a directory (and its nested AGENTS.md)."""


def _nested_name(shown: str) -> str:
    return shown.partition("[Instructions from ")[2].partition(",")[0]


@dataclass
class CallsDone:
    messages: list[ChatMessage]
    """One `tool` message per call, in order."""
    finished: Finished | None = None
    wrote: bool = False
    """A call of a tool that writes to the workspace ran (a checkpoint is due)."""


async def run_calls(
    ctx: ToolContext,
    hooks: Hooks,
    tools: dict[str, Tool],
    calls: list[ToolCallRecord],
    verification: Verification,
    announced: Collection[str] = (),
    finished: Finished | None = None,
) -> CallsDone:
    """Run `calls` in order; `finished` is a `finish` an earlier part of this turn returned."""
    cfg = ctx.config
    done = CallsDone([], finished)
    for call in calls:
        if call.id not in announced:
            await ctx.emit(ToolCalled(call_id=call.id, name=call.name, arguments=call.arguments))
        started = time.monotonic()
        tool = tools.get(call.name)
        if done.finished is not None:
            out = ToolOutput("not run: `finish` was already called", is_error=True)
        elif tool is None:
            out = ToolOutput(
                f"unknown tool {call.name!r}; available: {', '.join(tools)}", is_error=True
            )
        else:
            done.wrote = done.wrote or tool.writes
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
        done.messages.append(
            ChatMessage(
                role="tool",
                text=out.text,
                tool_call_id=call.id,
                is_error=out.is_error,
                images=list(out.images),
            )
        )
        if out.finished is not None and not out.is_error and done.finished is None:
            done.finished = out.finished
    return done


def finished_earlier(messages: list[ChatMessage]) -> Finished | None:
    """A `finish` of the last turn that returned without error (a resumed run's)."""
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is None:
        return None
    ok = {m.tool_call_id for m in messages if m.role == "tool" and not m.is_error}
    for call in last.tool_calls:
        if call.name == "finish" and call.id in ok:
            title = call.arguments.get("title")
            return Finished(str(call.arguments.get("summary", "")), str(title or ""))
    return None
