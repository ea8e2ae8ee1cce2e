"""`nightshift sessions list|show`: read what agents did."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.commands.common import console, load_settings, runtime_from
from app.commands.render import flush_text, render

app = typer.Typer(help="Sessions: read what agents did.", no_args_is_help=True)


@app.command("list")
def sessions_list(
    repo: Annotated[str | None, typer.Option(help="Only this repo")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    author: Annotated[str | None, typer.Option(help="Only this author's login")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 30,
) -> None:
    """List sessions, newest first."""
    with runtime_from(load_settings()) as runtime:
        rows, total = runtime.sessions.query(repo=repo, status=status, author=author, limit=limit)
        table = Table(
            "id", "status", "repo", "title", "pr", title=f"{len(rows)} of {total} sessions"
        )
        for r in rows:
            table.add_row(r.id, r.status, r.repo_name, r.title[:60], r.pr_url or "")
        console.print(table)


@app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument(help="Session id")],
    events: Annotated[bool, typer.Option("--events", help="Also print every event")] = False,
) -> None:
    """Show one session: status, prompts, branch and PR."""
    with runtime_from(load_settings()) as runtime:
        public = runtime.sessions.public(runtime.sessions.get(session_id))
        console.print_json(public.model_dump_json())
        for prompt in runtime.sessions.prompts(session_id):
            console.print(
                f"[bold]#{prompt.id}[/] {prompt.state} by {prompt.author.login}: {escape(prompt.text[:200])}"
            )
        if events:
            state: dict[str, object] = {}
            for event in runtime.sessions.events(session_id, 0, 100_000):
                render(event, state)
            flush_text(state, everything=True)
