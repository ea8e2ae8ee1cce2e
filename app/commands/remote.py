"""What the client commands share on the terminal: which server, which token, the error line,
and following a session's stream with live output (Ctrl-C: stop the session, or detach)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.prompt import Prompt

from app.commands.client import (
    DEFAULT_SERVER,
    ApiError,
    Client,
    Unreachable,
    normalize,
    stored_token,
    until_resting,
)
from app.commands.common import console, err, fail
from app.commands.embedded import embedded_server
from app.commands.render import flush_text, render
from workers.events import Event, StatusChanged

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help=f"The Nightshift server's URL (NIGHTSHIFT_SERVER; default {DEFAULT_SERVER})",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print each event as one JSON line instead")
]


def server_url(option: str | None) -> tuple[str, bool]:
    """The server to talk to, and whether the user named it (`--server`, NIGHTSHIFT_SERVER).

    Unnamed, it is where `nightshift serve` listens with this environment (NIGHTSHIFT_PORT),
    http://127.0.0.1:8000 by default.
    """
    named = option or os.environ.get("NIGHTSHIFT_SERVER")
    if named:
        return named, True
    port = os.environ.get("NIGHTSHIFT_PORT", "").strip()
    return (f"http://127.0.0.1:{port}" if port.isdigit() else DEFAULT_SERVER), False


def _busy(wait_s: float, _detail: str) -> None:
    err.print(
        f"[dim]· the server is busy taking in other prompts; sending again in {wait_s:.1f}s[/]"
    )


def make_client(url: str, token: str | None = None) -> Client:
    """A client of `url` with the token `nightshift login` stored for it (none: local auth);
    a prompt the server sheds while busy is sent again, saying so on stderr."""
    try:
        return Client(url, token if token is not None else stored_token(url), on_busy=_busy)
    except ApiError as exc:
        fail(str(exc), 1)


@contextlib.contextmanager
def connected(option: str | None, local: bool = False) -> Iterator[Client]:
    """A client of the named or default server that answers; any `ApiError` inside becomes the
    error line and exit 1. With `local`, no server named and none answering, the local data
    dir is served for the block (`app/commands/embedded.py`)."""
    url, named = server_url(option)
    client = make_client(url)
    try:
        try:
            client.health()
        except Unreachable as exc:
            if named:
                raise
            if not local:
                raise Unreachable(f"{exc}; start one with `nightshift serve`") from exc
            client.close()
            with embedded_server(url, quiet=True) as embedded:
                client = make_client(embedded.url, token="")
                yield client
                return
        yield client
    except ApiError as exc:
        fail(str(exc), 1)
    finally:
        client.close()


class Printer:
    """Shows events as `nightshift run` always has (rich), or as JSON lines with `--json`."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.state: dict[str, object] = {}
        self.status: Any = None

    def show(self, event: Event) -> None:
        if self.as_json:
            print(event.model_dump_json(), flush=True)
            return
        render(event, self.state)
        if isinstance(event, StatusChanged) and self.status is not None:
            self.status.update(f"{event.status}…")

    def note(self, message: str) -> None:
        if not self.as_json:
            flush_text(self.state, everything=True)
        err.print(f"[yellow]· {message}[/]", highlight=False)

    def done(self) -> None:
        if not self.as_json:
            flush_text(self.state, everything=True)


def watch(
    client: Client,
    session_id: str,
    since: int,
    printer: Printer,
    after: int = 0,
    embedded: bool = False,
    prompt_id: int | None = None,
    through: int | None = None,
) -> None:
    """Follow the session's events after `after` until it rests after event `since`.

    Ctrl-C asks whether to stop the session or detach; without a terminal it detaches and
    says how to re-attach; on an embedded server (gone with this command) it stops. Either
    way the command then exits with 130.
    """

    async def follow() -> None:
        async def reconnecting(message: str) -> None:
            printer.note(message)

        await client.follow(
            session_id,
            after,
            until_resting(since, prompt_id, through),
            printer.show,
            on_reconnect=reconnecting,
        )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(follow())
    try:
        if printer.as_json:
            loop.run_until_complete(task)
        else:
            with console.status("working…", spinner="dots") as status:
                printer.status = status
                loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task)
        printer.done()
        _interrupted(client, session_id, embedded)
    finally:
        printer.status = None
        printer.done()
        asyncio.set_event_loop(None)
        loop.close()


def _interrupted(client: Client, session_id: str, embedded: bool) -> None:
    again = f"nightshift attach {session_id}"
    if client.server != _default_normalized():
        again += f" --server {client.server}"
    choice = "stop" if embedded else "detach"
    if not embedded and sys.stdin.isatty():
        try:
            choice = Prompt.ask(
                "\nstop the session, or detach and let it go on?",
                choices=["stop", "detach"],
                default="detach",
                console=err,
            )
        except (KeyboardInterrupt, EOFError):
            choice = "detach"
    if choice == "stop":
        try:
            client.stop(session_id)
        except ApiError as exc:
            fail(str(exc), 1)
        err.print(f"[yellow]stopped session {session_id}[/]", highlight=False)
    else:
        err.print(
            f"\n[yellow]detached; session {session_id} goes on.[/] Re-attach with: {again}",
            highlight=False,
        )
    raise typer.Exit(130)


def _default_normalized() -> str:
    return normalize(server_url(None)[0])


def print_outcome(client: Client, session_id: str, printer: Printer) -> None:
    """The session's branch and PR as the server links them; exit 1 if it failed or stopped."""
    try:
        final = client.session(session_id)
    except ApiError as exc:
        fail(str(exc), 1)
    if printer.as_json:
        print(_json_line(final), flush=True)
    if final["status"] == "failed" or printer.state.get("outcome") == "failed":
        reason = printer.state.get("error") or printer.state.get("summary")
        fail(str(reason or "the session failed"), 1)
    if final["status"] == "stopped":
        fail("the session was stopped", 1)
    if printer.as_json:
        return
    if final.get("head_sha"):
        console.print(
            f"\n[bold green]branch[/] {final['branch']} @ {final['head_sha'][:10]}",
            highlight=False,
        )
        if final.get("pr_url"):
            console.print(f"[bold green]pull request[/] {final['pr_url']}", highlight=False)
    else:
        console.print("\n[bold]done[/] — the agent changed nothing, so there is no branch.")
    console.print(f"[dim]session[/] {final['url']}", highlight=False)


def _json_line(data: dict[str, Any]) -> str:
    import json

    return json.dumps({"type": "session", "session": data})
