"""How a session's events look on the terminal, for `nightshift run` and `sessions show`."""

from __future__ import annotations

from rich.markup import escape

from app.commands.common import console
from workers.agent.tools import describe_call
from workers.events import (
    BranchPushed,
    ChildSpawned,
    CommitCreated,
    ErrorRaised,
    Event,
    ModelRetry,
    Notice,
    PromptFinished,
    PrOpened,
    SandboxReady,
    StatusChanged,
    TextDelta,
    ToolCalled,
    ToolResult,
)


def flush_text(state: dict[str, object], everything: bool) -> None:
    """Print the model's buffered text up to its last newline (or all of it).

    Whole lines only: under the live spinner a partial line would be broken in two.
    """
    text = str(state.get("text", ""))
    cut = len(text) if everything else text.rfind("\n") + 1
    if cut > 0:
        console.print(text[:cut].rstrip("\n"), style="white", highlight=False, markup=False)
        state["text"] = text[cut:]


def render(event: Event, state: dict[str, object]) -> None:
    """Show one event; the model's text is buffered in `state` and printed in whole lines."""
    if isinstance(event, TextDelta):
        state["text"] = str(state.get("text", "")) + event.text
        flush_text(state, everything=False)
        return
    if isinstance(event, ErrorRaised):
        state["error"] = event.message
    elif isinstance(event, PromptFinished):
        state["outcome"] = event.outcome
        state["summary"] = event.summary
    shown = event_line(event)
    if shown is not None:
        flush_text(state, everything=True)  # the event gets a line of its own
        console.print(shown, highlight=False)


def event_line(event: Event) -> str | None:
    """How `run` shows an event (rich markup), or None for one it does not show."""
    if isinstance(event, StatusChanged):
        return f"[dim]· {event.status}{f' ({event.reason})' if event.reason else ''}[/]"
    if isinstance(event, SandboxReady):
        return f"[dim]· sandbox ready from {event.mode} in {event.ms_since_prompt} ms[/]"
    if isinstance(event, ToolCalled):
        return f"[cyan]→ {describe_call(event.name, event.arguments)}[/]"
    if isinstance(event, ToolResult):
        lines = event.output.strip().splitlines()
        preview = "\n".join("  " + line for line in lines[:6])
        more = f"\n  [dim]… {len(lines) - 6} more lines[/]" if len(lines) > 6 else ""
        style = "red" if event.is_error else "dim"
        return f"[{style}]{escape(preview)}[/]{more}"
    if isinstance(event, ModelRetry):
        return (
            f"[yellow]· model retry {event.retry} in {event.wait_s:.1f}s: {escape(event.reason)}[/]"
        )
    if isinstance(event, CommitCreated):
        return f"[green]· committed {event.sha[:10]} as {escape(event.author)}[/]"
    if isinstance(event, BranchPushed):
        return f"[green]· pushed {event.branch} ({event.sha[:10]})[/]"
    if isinstance(event, PrOpened):
        return f"[green]· pull request #{event.number}: {event.url}[/]"
    if isinstance(event, ChildSpawned):
        return f"[magenta]· spawned session {event.child_id} on {event.repo}[/]"
    if isinstance(event, Notice) and event.follow_up:
        # Where the follow-up came from, with its link: said once, next to its prompt.
        link = f" {escape(event.link)}" if event.link else ""
        return f"[cyan]↪ prompt {event.prompt_id}: {escape(event.message)}{link}[/]"
    if isinstance(event, Notice):
        return f"[yellow]· {escape(event.message)}{f' {event.link}' if event.link else ''}[/]"
    if isinstance(event, ErrorRaised):
        return f"[bold red]· {event.code}: {escape(event.message)}[/]"
    return None
