"""Resuming a prompt whose runner died: its conversation is rebuilt from its stored events.

Every attempt of a prompt publishes its model turns (`message`), tool calls and results, and
a checkpoint (`snapshot`) after each turn that wrote to the workspace. The next attempt starts
its sandbox from the session's last snapshot — that checkpoint — and continues the
conversation at the first turn that did not complete. A tool call that had not returned is
run again; no call that returned is. Only what the stored events say is trusted: a writing
call that returned after the last checkpoint is named to the model, whose workspace may lack
its effect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from integrations.llm.types import ChatMessage, ToolCallRecord
from workers.agent.calls import finished_earlier, run_calls
from workers.agent.hooks import Hooks
from workers.agent.tools import Finished, Tool, ToolContext
from workers.agent.verify import Verification
from workers.events import (
    Event,
    MessageAdded,
    RunResumed,
    SnapshotTaken,
    ToolCalled,
    ToolResult,
    UsageReported,
    VerifyRan,
)

Checkpoint = Callable[[], Awaitable[None]]
"""Saves the workspace after a turn that wrote, so a resumed run starts from it."""

RESUME_EVENT_TYPES = ["message", "tool_call", "tool_result", "usage", "snapshot", "verify"]
"""The stored events a resumed attempt reads (text deltas and the like are not needed)."""


@dataclass
class Resumed:
    """What earlier attempts of a prompt left: the conversation to continue and its counts."""

    messages: list[ChatMessage]
    """The prompt's conversation so far, its user message first."""
    steps: int = 0
    """Model turns that completed."""
    tokens: int = 0
    pending: list[ToolCallRecord] = field(default_factory=list)
    """Calls of the last turn that did not return, in order."""
    announced: set[str] = field(default_factory=set)
    """Of `pending`, the call ids whose `tool_call` event was stored."""
    unsaved: list[ToolCallRecord] = field(default_factory=list)
    """Writing calls that returned after the last checkpoint."""
    checkpointed: bool = False
    """A checkpoint of this prompt exists: the sandbox starts from it."""
    verification: Verification = field(default_factory=Verification)
    """Where the verify rounds stood (so a resumed run does not get more of them)."""


def rebuild(events: list[Event], writes: Callable[[str], bool]) -> Resumed | None:
    """The state to resume from, or None when no earlier attempt stored anything to go on."""
    messages: list[ChatMessage] = []
    results: set[str] = set()
    announced: set[str] = set()
    calls: dict[str, ToolCallRecord] = {}
    since_checkpoint: list[str] = []
    resumed = Resumed(messages)
    for event in events:
        if isinstance(event, MessageAdded):
            messages.append(event.message)
            if event.message.role == "assistant":
                resumed.steps += 1
                calls.update({c.id: c for c in event.message.tool_calls})
        elif isinstance(event, ToolCalled):
            announced.add(event.call_id)
        elif isinstance(event, ToolResult) and event.call_id not in results:
            results.add(event.call_id)
            messages.append(
                ChatMessage(
                    role="tool",
                    text=event.output,
                    tool_call_id=event.call_id,
                    is_error=event.is_error,
                )
            )
            if writes(event.name):
                since_checkpoint.append(event.call_id)
        elif isinstance(event, UsageReported):
            resumed.tokens += event.input_tokens + event.output_tokens
        elif isinstance(event, VerifyRan):
            resumed.verification = Verification(event.round, list(event.checks))
        elif isinstance(event, SnapshotTaken):
            resumed.checkpointed = True
            since_checkpoint.clear()
    if not messages or messages[0].role != "user":
        return None
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is not None:
        resumed.pending = [c for c in last.tool_calls if c.id not in results]
    resumed.announced = {c.id for c in resumed.pending} & announced
    resumed.unsaved = [calls[i] for i in since_checkpoint if i in calls]
    return resumed


def note(resumed: Resumed, rerun: list[ToolCallRecord], kept_sandbox: bool) -> str:
    """The one short message that tells the model what happened."""
    when = f"after your turn {resumed.steps}" if resumed.steps else "before your first answer"
    parts = [
        f"Note: the worker running this task stopped unexpectedly {when}; another worker "
        "continues the conversation from there."
    ]
    if kept_sandbox:
        parts.append("The workspace is the one you were working in.")
    elif resumed.checkpointed:
        parts.append("The workspace was restored from the last checkpoint of this task.")
    else:
        parts.append("The workspace was restored from where this task started.")
    if rerun:
        names = ", ".join(f"`{c.name}` ({c.id})" for c in rerun)
        parts.append(f"Cut short, then run again: {names}; its result is from the new run.")
    if resumed.unsaved and not kept_sandbox:
        names = ", ".join(f"`{c.name}` ({c.id})" for c in resumed.unsaved)
        parts.append(
            f"The effect of {names} may be missing from the workspace: check it before going on."
        )
    return " ".join(parts)


async def resume(
    ctx: ToolContext,
    hooks: Hooks,
    tools: dict[str, Tool],
    resumed: Resumed,
    verification: Verification,
    checkpoint: Checkpoint | None,
    kept_sandbox: bool,
) -> tuple[Finished | None, list[ChatMessage], str]:
    """Pick up where the dead attempt stopped: re-run the calls that had not returned.

    Returns a `finish` that returned (the run ends), the tool messages added, and the note for
    the model, which goes into this attempt's system prompt: the stored conversation stays what
    the model said and saw.
    """
    finished = finished_earlier(resumed.messages)
    rerun = [] if finished is not None else resumed.pending
    told = note(resumed, rerun, kept_sandbox)
    await ctx.emit(
        RunResumed(
            from_turn=resumed.steps + 1,
            rerun=[c.id for c in rerun],
            unsaved=[] if kept_sandbox else [c.id for c in resumed.unsaved],
            note=told,
        )
    )
    added: list[ChatMessage] = []
    if rerun:
        done = await run_calls(ctx, hooks, tools, rerun, verification, resumed.announced)
        added += done.messages
        if done.wrote and checkpoint is not None:
            await checkpoint()
        finished = done.finished
    return finished, added, told
