"""`nightshift run`: one prompt from the terminal, the agent's work streamed as it happens."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import console, err, fail, load_settings, runtime_from
from app.commands.render import flush_text, render
from app.errors import ServiceError
from app.runtime import Runtime
from app.schemas import RepoCreate
from workers.events import StatusChanged


async def _follow(runtime: Runtime, session_id: str, state: dict[str, object]) -> None:
    events = runtime.hub.stream(session_id, 0)
    try:
        with console.status("working…", spinner="dots") as status:
            async for event in events:
                render(event, state)
                if isinstance(event, StatusChanged):
                    status.update(f"{event.status}…")
                    if event.status in ("finished", "failed", "stopped"):
                        return
    finally:
        flush_text(state, everything=True)
        await events.aclose()


def _wait_for_runner(runtime: Runtime, session_id: str, timeout: float = 30.0) -> None:
    """Let the runner finish its clean-up (snapshot, lease) before the process exits."""
    import time

    runners = getattr(runtime.dispatcher, "runners", {})
    deadline = time.monotonic() + timeout
    while session_id in runners and time.monotonic() < deadline:
        time.sleep(0.05)


def run(
    prompt: Annotated[str, typer.Argument(help="What the agent should do")],
    repo: Annotated[
        str,
        typer.Option(
            "--repo", "-r", help="A registered repo's name or a local git repository path"
        ),
    ],
) -> None:
    """Run one prompt from the terminal: stream the agent's work, print the branch and PR."""
    settings = load_settings(idle_seconds=0, image_interval=0)  # one prompt: no build schedule
    with runtime_from(settings) as runtime:
        try:
            user = runtime.users.local_user()
        except ServiceError as exc:
            fail(str(exc))
        row = runtime.repos.find_local(repo) if Path(repo).expanduser().exists() else None
        if row is None:
            try:
                row = runtime.repos.get(repo)
            except ServiceError:
                if not Path(repo).expanduser().exists():
                    raise
                row = runtime.repos.add(RepoCreate(url=repo))
                console.print(f"[dim]· registered repo {row.name} ({row.url})[/]", highlight=False)
        runtime.start()
        session = runtime.sessions.create(user, row.name, prompt, source="cli")
        console.print(
            f"[bold]session {session.id}[/] on {row.name} as {user.name} <{user.email}>",
            highlight=False,
        )
        state: dict[str, object] = {}
        loop = asyncio.new_event_loop()
        task = loop.create_task(_follow(runtime, session.id, state))
        try:
            loop.run_until_complete(task)
        except KeyboardInterrupt:
            err.print("\n[yellow]stopping the session…[/]")
            runtime.sessions.stop(user, session.id)
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(task, 15))
            raise typer.Exit(130) from None
        finally:
            loop.close()
        _wait_for_runner(runtime, session.id)
        final = runtime.sessions.get(session.id)
        if state.get("outcome") == "failed" or final.status == "failed":
            fail(str(state.get("error") or state.get("summary") or "the session failed"), 1)
        if final.status == "stopped":
            fail("the session was stopped", 1)
        if final.head_sha:
            console.print(
                f"\n[bold green]branch[/] {final.branch} @ {final.head_sha[:10]}", highlight=False
            )
            if final.pr_url:
                console.print(f"[bold green]pull request[/] {final.pr_url}", highlight=False)
        else:
            console.print("\n[bold]done[/] — the agent changed nothing, so there is no branch.")
