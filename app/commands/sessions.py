"""Sessions on a server: `sessions list|show`, and `attach`, `prompt`, `stop` for one session.

All of them are clients of the server's API (`app/commands/client.py`); a refusal is one error
line with the server's message and exit 1.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from app.commands.client import RESTING
from app.commands.common import console, err
from app.commands.remote import JsonOption, Printer, ServerOption, connected, print_outcome, watch
from app.commands.render import flush_text, render

app = typer.Typer(help="Sessions: read what agents did.", no_args_is_help=True)
STOP_WAIT_S = 30.0
SessionId = Annotated[str, typer.Argument(help="Session id")]


@app.command("list")
def sessions_list(
    repo: Annotated[str | None, typer.Option(help="Only this repo")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    author: Annotated[str | None, typer.Option(help="Only this author's login")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 30,
    server: ServerOption = None,
) -> None:
    """List sessions, newest first (no server answering: those of the local data dir)."""
    with connected(server, local=True) as client:
        found = client.sessions(repo=repo, status=status, author=author, limit=limit)
        rows = found["sessions"]
        table = Table(
            "id", "status", "repo", "title", "pr", title=f"{len(rows)} of {found['total']} sessions"
        )
        for r in rows:
            table.add_row(r["id"], r["status"], r["repo"], r["title"][:60], r["pr_url"] or "")
        console.print(table)


@app.command("show")
def sessions_show(
    session_id: SessionId,
    events: Annotated[bool, typer.Option("--events", help="Also print every event")] = False,
    server: ServerOption = None,
) -> None:
    """Show one session: status, prompts, branch and PR."""
    with connected(server, local=True) as client:
        public = client.session(session_id)
        console.print_json(json.dumps(public))
        for prompt in client.prompts(session_id):
            console.print(
                f"[bold]#{prompt['id']}[/] {prompt['state']} by {prompt['author']['login']}: "
                f"{escape(prompt['text'][:200])}",
                highlight=False,
            )
        if events:
            state: dict[str, object] = {}
            for event in client.events(session_id):
                render(event, state)
            flush_text(state, everything=True)


def attach(
    session_id: SessionId,
    after: Annotated[
        int, typer.Option(help="Show only events after this id (0: the whole history)")
    ] = 0,
    server: ServerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow a session's stream: its history, then its work live until it rests."""
    with connected(server) as client:
        now = client.session(session_id)
        since = int(now["last_event_id"])
        resting = now["status"] in RESTING and since > 0  # show its history, then return
        printer = Printer(as_json)
        if not resting or after < since:
            watch(
                client,
                session_id,
                since,
                printer,
                after=max(after, 0),
                through=since if resting else None,
            )
        print_outcome(client, session_id, printer)


def prompt(
    session_id: SessionId,
    text: Annotated[str, typer.Argument(help="The follow-up")],
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Queue it and return without following")
    ] = False,
    server: ServerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a follow-up in a session (in your name), then follow its work until it rests."""
    with connected(server) as client:
        since = int(client.session(session_id)["last_event_id"])
        queued = client.add_prompt(session_id, text)
        err.print(
            f"queued prompt #{queued['id']} in session {session_id}"
            + (f" (place {queued['position']} in the queue)" if queued.get("position") else ""),
            highlight=False,
        )
        if detach:
            return
        printer = Printer(as_json)
        watch(client, session_id, since, printer, after=since, prompt_id=int(queued["id"]))
        print_outcome(client, session_id, printer)


def stop(session_id: SessionId, server: ServerOption = None) -> None:
    """Stop a session now: its running command and model call end, queued prompts are dropped."""
    with connected(server) as client:
        stopped = client.stop(session_id)
        deadline = time.monotonic() + STOP_WAIT_S
        with console.status("stopping…", spinner="dots"):
            while stopped["status"] not in RESTING and time.monotonic() < deadline:
                time.sleep(0.2)  # the runner ends its command and model call, then says so
                stopped = client.session(session_id)
        console.print(f"session {stopped['id']}: {stopped['status']}", highlight=False)
