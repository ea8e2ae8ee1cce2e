"""`nightshift run`: one prompt from the terminal, the agent's work streamed as it happens.

A client of the server (`--server`, NIGHTSHIFT_SERVER, else where `nightshift serve` listens):
the server runs the session and is the one writer of its events, so the web viewer and other
clients see the same stream. With no server named and none answering, the command serves the
local data dir itself for its own duration (`app/commands/embedded.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from app.commands.client import ApiError, Client, Unreachable
from app.commands.common import console, err, fail
from app.commands.embedded import embedded_server
from app.commands.remote import (
    JsonOption,
    Printer,
    ServerOption,
    make_client,
    print_outcome,
    server_url,
    watch,
)


def run(
    prompt: Annotated[str, typer.Argument(help="What the agent should do")],
    repo: Annotated[
        str,
        typer.Option(
            "--repo", "-r", help="A registered repo's name or a local git repository path"
        ),
    ],
    server: ServerOption = None,
    model: Annotated[
        str | None,
        typer.Option(help="A model from the server's list (GET /api/models); default: its own"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run one prompt on a server: stream the agent's work, print the branch and PR.

    With no server named and none answering at the default URL, an embedded one serves the
    local data dir (NIGHTSHIFT_DATA_DIR) for this command only.
    """
    url, named = server_url(server)
    client = make_client(url)
    try:
        client.health()
    except Unreachable as exc:
        client.close()
        if named:
            fail(str(exc), 1)
        _run_embedded(url, prompt, repo, model, as_json)
        return
    try:
        session_id = _start(client, _remote_repo(client, repo, as_json), prompt, model, as_json)
        printer = Printer(as_json)
        watch(client, session_id, 0, printer)
        print_outcome(client, session_id, printer)
    except ApiError as exc:
        fail(str(exc), 1)
    finally:
        client.close()


def _run_embedded(absent: str, prompt: str, repo: str, model: str | None, as_json: bool) -> None:
    with embedded_server(absent, quiet=as_json) as embedded:
        client = make_client(embedded.url, token="")  # NIGHTSHIFT_AUTH=local: no token
        try:
            session_id = _start(client, embedded.register(repo), prompt, model, as_json)
            printer = Printer(as_json)
            watch(client, session_id, 0, printer, embedded=True)
            embedded.wait_for_runner(session_id)
            print_outcome(client, session_id, printer)
        except ApiError as exc:
            fail(str(exc), 1)
        finally:
            client.close()


def _remote_repo(client: Client, repo: str, as_json: bool) -> str:
    """The server's name for `repo`: a name as given, a local path as registered (or added)."""
    from integrations.forge.base import ForgeError
    from integrations.forge.local import resolve_local_repo

    if not Path(repo).expanduser().exists():
        return repo
    try:
        resolved = str(resolve_local_repo(repo))
    except ForgeError as exc:
        fail(str(exc), 1)
    for row in client.repos():
        if row["url"] == resolved:
            return str(row["name"])
    row = client.add_repo(resolved)
    (err if as_json else console).print(
        f"[dim]· registered repo {row['name']} ({row['url']})[/]", highlight=False
    )
    return str(row["name"])


def process_age_ms() -> int | None:
    """Milliseconds since this process started (Linux's /proc), None where that is unknown."""
    try:
        # Field 22 of /proc/self/stat, counted after the command name's closing parenthesis.
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0, int((uptime - started / os.sysconf("SC_CLK_TCK")) * 1000))
    except (OSError, ValueError, IndexError):
        return None


def _start(client: Client, repo: str, prompt: str, model: str | None, as_json: bool) -> str:
    # The command's own start-up (Python, the CLI, and the embedded server when there is one),
    # apart from the sandbox's figure, which counts from the prompt.
    age = process_age_ms()
    if age is not None:
        (err if as_json else console).print(
            f"[dim]· command ready to send the prompt {age} ms after it started[/]",
            highlight=False,
        )
    session = client.create_session(repo, prompt, model)
    author = session["author"]
    line = f"session {session['id']} on {session['repo']} as {author['name']} <{author['email']}>"
    if as_json:
        typer.echo(line, err=True)
    else:
        console.print(f"[bold]{line}[/]\n[dim]{session['url']}[/]", highlight=False)
    return str(session["id"])
