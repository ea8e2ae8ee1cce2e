"""The `nightshift` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from app.errors import ServiceError
from app.runtime import Runtime, build_runtime
from app.schemas import RepoCreate
from app.settings import Settings
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

app = typer.Typer(
    help="Nightshift: background coding agents that end in a pull request in your name.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
repos_app = typer.Typer(help="Repositories Nightshift can work on.", no_args_is_help=True)
sessions_app = typer.Typer(help="Sessions: read what agents did.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens for people and tools.", no_args_is_help=True)
app.add_typer(repos_app, name="repos")
app.add_typer(sessions_app, name="sessions")
app.add_typer(tokens_app, name="tokens")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        fail(str(exc))


@contextlib.contextmanager
def runtime_from(settings: Settings) -> Iterator[Runtime]:
    try:
        runtime = build_runtime(settings)
    except Exception as exc:
        fail(f"could not start: {exc}")
    try:
        yield runtime
    except ServiceError as exc:
        fail(str(exc))
    finally:
        runtime.close()


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (NIGHTSHIFT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (NIGHTSHIFT_PORT)")] = None,
) -> None:
    """Serve the API, the web viewer and an in-process worker."""
    import uvicorn

    from app.main import create_app

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = load_settings(**overrides)
    who = ""
    if settings.auth == "local":
        from app.services.users import git_identity

        try:
            name, email = git_identity()
        except ServiceError as exc:
            fail(str(exc))
        who = f" as {name} <{email}> (NIGHTSHIFT_AUTH=local)"
    console.print(
        f"Nightshift is serving at [bold]{settings.base_url}[/]{who}\n"
        f"  web viewer  {settings.base_url}/\n  API docs    {settings.base_url}/docs\n"
        f"  data dir    {settings.data_dir.resolve()}\n"
        f"  model       {settings.model or 'not configured (set NIGHTSHIFT_MODEL)'}",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Events are small JSON frames: compressing each costs more CPU than it saves.
        ws_per_message_deflate=False,
        # Open event streams (web pages) would hold shutdown forever; they reconnect anyway.
        timeout_graceful_shutdown=3,
    )


# ---------------------------------------------------------------- run


def _flush_text(state: dict[str, object], everything: bool) -> None:
    """Print the model's buffered text up to its last newline (or all of it).

    Whole lines only: under the live spinner a partial line would be broken in two.
    """
    text = str(state.get("text", ""))
    cut = len(text) if everything else text.rfind("\n") + 1
    if cut > 0:
        console.print(text[:cut].rstrip("\n"), style="white", highlight=False, markup=False)
        state["text"] = text[cut:]


def _render(event: Event, state: dict[str, object]) -> None:
    if isinstance(event, TextDelta):
        state["text"] = str(state.get("text", "")) + event.text
        _flush_text(state, everything=False)
        return
    if isinstance(event, ErrorRaised):
        state["error"] = event.message
    elif isinstance(event, PromptFinished):
        state["outcome"] = event.outcome
        state["summary"] = event.summary
    line = _line(event)
    if line is not None:
        _flush_text(state, everything=True)  # the event gets a line of its own
        console.print(line, highlight=False)


def _line(event: Event) -> str | None:
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
        return f"[{style}]{_escape(preview)}[/]{more}"
    if isinstance(event, ModelRetry):
        return f"[yellow]· model retry {event.retry} in {event.wait_s:.1f}s: {_escape(event.reason)}[/]"
    if isinstance(event, CommitCreated):
        return f"[green]· committed {event.sha[:10]} as {_escape(event.author)}[/]"
    if isinstance(event, BranchPushed):
        return f"[green]· pushed {event.branch} ({event.sha[:10]})[/]"
    if isinstance(event, PrOpened):
        return f"[green]· pull request #{event.number}: {event.url}[/]"
    if isinstance(event, ChildSpawned):
        return f"[magenta]· spawned session {event.child_id} on {event.repo}[/]"
    if isinstance(event, Notice):
        return f"[yellow]· {_escape(event.message)}{f' {event.link}' if event.link else ''}[/]"
    if isinstance(event, ErrorRaised):
        return f"[bold red]· {event.code}: {_escape(event.message)}[/]"
    return None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


async def _follow(runtime: Runtime, session_id: str, state: dict[str, object]) -> None:
    events = runtime.hub.stream(session_id, 0)
    try:
        with console.status("working…", spinner="dots") as status:
            async for event in events:
                _render(event, state)
                if isinstance(event, StatusChanged):
                    status.update(f"{event.status}…")
                    if event.status in ("finished", "failed", "stopped"):
                        return
    finally:
        _flush_text(state, everything=True)
        await events.aclose()


def _wait_for_runner(runtime: Runtime, session_id: str, timeout: float = 30.0) -> None:
    """Let the runner finish its clean-up (snapshot, lease) before the process exits."""
    import time

    runners = getattr(runtime.dispatcher, "runners", {})
    deadline = time.monotonic() + timeout
    while session_id in runners and time.monotonic() < deadline:
        time.sleep(0.05)


@app.command()
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


# ---------------------------------------------------------------- repos


@repos_app.command("add")
def repos_add(
    url: Annotated[
        str, typer.Argument(help="A local git repository path, or owner/name on GitHub")
    ],
    name: Annotated[
        str | None, typer.Option(help="Name to refer to it by (default: directory name)")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Base branch (default: the current branch)")
    ] = None,
    setup: Annotated[
        list[str] | None, typer.Option(help="Set-up command for images (repeatable)")
    ] = None,
    warm: Annotated[
        list[str] | None, typer.Option(help="Cache-warming command for images (repeatable)")
    ] = None,
    egress: Annotated[
        str | None, typer.Option(help="Hosts sandboxes may reach, comma-separated")
    ] = None,
    description: Annotated[
        str, typer.Option(help="What the repository is, for people and the classifier")
    ] = "",
    pool_size: Annotated[int, typer.Option(help="Warm sandboxes to keep ready")] = 0,
) -> None:
    """Register a repository."""
    from pydantic import ValidationError

    try:
        body = RepoCreate(
            url=url,
            name=name,
            base=base,
            setup=setup or [],
            warm=warm or [],
            egress=[h for h in (egress or "").split(",") if h.strip()],
            description=description,
            pool_size=pool_size,
        )
    except ValidationError as exc:
        fail("; ".join(e["msg"] for e in exc.errors()))
    with runtime_from(load_settings()) as runtime:
        row = runtime.repos.add(body)
        console.print(
            f"added [bold]{row.name}[/] ({row.forge}: {row.url}, base {row.base})", highlight=False
        )


@repos_app.command("list")
def repos_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """List registered repositories."""
    with runtime_from(load_settings()) as runtime:
        rows = runtime.repos.list()
        if as_json:
            from app.schemas import RepoPublic

            print(json.dumps([RepoPublic.model_validate(r).model_dump() for r in rows], indent=2))
            return
        table = Table("name", "forge", "base", "url")
        for r in rows:
            table.add_row(r.name, r.forge, r.base, r.url)
        console.print(table)


# ---------------------------------------------------------------- sessions


@sessions_app.command("list")
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


@sessions_app.command("show")
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
                f"[bold]#{prompt.id}[/] {prompt.state} by {prompt.author.login}: {_escape(prompt.text[:200])}"
            )
        if events:
            state: dict[str, object] = {}
            for event in runtime.sessions.events(session_id, 0, 100_000):
                _render(event, state)
            _flush_text(state, everything=True)


# ---------------------------------------------------------------- tokens


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="The person's full name (used in commits)")],
    email: Annotated[str, typer.Option(help="The person's commit email")],
    login: Annotated[
        str | None, typer.Option(help="Login (default: the email's local part)")
    ] = None,
    label: Annotated[str, typer.Option(help="What the token is for")] = "cli",
) -> None:
    """Create a user (or update one) and print a new API token for them, once."""
    with runtime_from(load_settings()) as runtime:
        user = runtime.users.upsert(login or email.split("@")[0], name, email)
        token = runtime.users.create_token(user, label)
        err.print(f"token for {user.login} ({user.name} <{user.email}>); it is shown only once:")
        print(token)


# ---------------------------------------------------------------- area commands
# Each area keeps its commands in app/commands/<area>.py and registers them here.
from app.commands import github as _github_commands  # noqa: E402

app.add_typer(_github_commands.app, name="github")

from app.commands.slack import slack_app  # noqa: E402

app.add_typer(slack_app, name="slack")

from app.commands import distributed as _distributed  # noqa: E402
from app.commands import sandbox as _sandbox_commands  # noqa: E402
from app.commands.bench import bench_app  # noqa: E402
from app.commands.images import images_app  # noqa: E402

app.add_typer(images_app, name="images")
app.add_typer(bench_app, name="bench")
_distributed.register(app)
app.add_typer(_sandbox_commands.app, name="sandbox")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
