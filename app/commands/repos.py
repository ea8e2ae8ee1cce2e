"""`nightshift repos add|set|remove|show|list`: the repositories Nightshift can work on."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from app.commands.common import console, fail
from app.commands.repo_stores import RepoStore, repo_store
from app.schemas import RepoCreate, RepoUpdate, utc_minute, validation_message

app = typer.Typer(help="Repositories Nightshift can work on.", no_args_is_help=True)

_ON_SERVER = (
    "Act on the Nightshift server at this URL, through its API with the token `nightshift "
    "login` kept for it (default: this machine's data dir, even when NIGHTSHIFT_SERVER is set)"
)
OnServerOption = Annotated[
    str | None, typer.Option("--server", help=_ON_SERVER, show_default=False)
]


def _local_hint(server: str | None, repos: RepoStore, command: str, what: str) -> None:
    """Say that NIGHTSHIFT_SERVER, a client setting, does not move this command to the server."""
    from app.commands.remote import server_url

    url, named = server_url(None)
    if server or not named:
        return
    console.print(
        f"[yellow]NIGHTSHIFT_SERVER is set ({url}), but `nightshift repos {command}` works "
        f'{repos.where}, not on that server: pass --server "$NIGHTSHIFT_SERVER" to {what} '
        "there[/]",
        highlight=False,
    )


@app.command("add")
def repos_add(
    url: Annotated[
        str,
        typer.Argument(
            help="A local git repository path (with --server: on the server's machine), or "
            "owner/name on GitHub"
        ),
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
    image: Annotated[
        str | None,
        typer.Option(help="OCI image sandboxes run on, e.g. python:3.12-slim (default: host)"),
    ] = None,
    dockerfile: Annotated[
        str | None, typer.Option(help="Dockerfile in the repository to build the environment")
    ] = None,
    context: Annotated[
        str | None, typer.Option(help="The Dockerfile's build context, relative to the repo")
    ] = None,
    devcontainer: Annotated[
        bool,
        typer.Option(
            help="Let .devcontainer/devcontainer.json declare the environment when nothing "
            "else does (--no-devcontainer: never read it)"
        ),
    ] = True,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help=_ON_SERVER + "; a local path is then one on the server's machine, inside its "
            "NIGHTSHIFT_REPO_ROOTS",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register a repository in this machine's data dir (NIGHTSHIFT_DATA_DIR), where a server
    serving it finds it; with --server URL on that server instead (POST /api/repos), which
    reads a local path on its own machine, inside its NIGHTSHIFT_REPO_ROOTS. NIGHTSHIFT_SERVER
    alone does not send it there."""
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
            image=image,
            dockerfile=dockerfile,
            context=context,
            devcontainer=devcontainer,
        )
    except ValidationError as exc:
        fail("; ".join(e["msg"] for e in exc.errors()))
    with repo_store(server) as repos:
        _local_hint(server, repos, "add", "register it")
        row = repos.add(body)
        console.print(
            f"added [bold]{row.name}[/] ({row.forge}: {row.url}, base {row.base}) {repos.where}",
            highlight=False,
        )
        for warning in row.warnings:
            console.print(f"[yellow]{warning}[/]", highlight=False)


def _cleared(values: list[str] | None) -> list[str] | None:
    """A repeatable option's values; one empty value (`--setup ''`) means none."""
    return None if values is None else [v for v in values if v]


@app.command("set")
def repos_set(
    name: Annotated[str, typer.Argument(help="The repo's name, as listed")],
    base: Annotated[str | None, typer.Option(help="Base branch")] = None,
    setup: Annotated[
        list[str] | None,
        typer.Option(help="Set-up command for images (repeatable; replaces them; '' for none)"),
    ] = None,
    warm: Annotated[
        list[str] | None,
        typer.Option(help="Cache-warming command (repeatable; replaces them; '' for none)"),
    ] = None,
    egress: Annotated[
        str | None, typer.Option(help="Hosts sandboxes may reach, comma-separated ('' for none)")
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for sandboxes (repeatable; replaces them; '' for none)"),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the repository is")] = None,
    pool_size: Annotated[int | None, typer.Option(help="Warm sandboxes to keep ready")] = None,
    image: Annotated[
        str | None, typer.Option(help="OCI image sandboxes run on ('' for the host's tools)")
    ] = None,
    dockerfile: Annotated[
        str | None,
        typer.Option(help="Dockerfile in the repository to build the environment ('' for none)"),
    ] = None,
    context: Annotated[str | None, typer.Option(help="The Dockerfile's build context")] = None,
    devcontainer: Annotated[
        bool | None,
        typer.Option(help="Whether .devcontainer/devcontainer.json may declare the environment"),
    ] = None,
    server: OnServerOption = None,
) -> None:
    """Change a registered repo in this machine's data dir, or with --server URL on that
    server (PATCH /api/repos/{repo}, which rebuilds its image at once): the options given,
    the rest kept (name and url never change)."""
    from pydantic import ValidationError

    given: dict[str, object] = {
        "base": base,
        "setup": _cleared(setup),
        "warm": _cleared(warm),
        "egress": None if egress is None else [h for h in egress.split(",") if h.strip()],
        "description": description,
        "pool_size": pool_size,
        "image": image,
        "dockerfile": dockerfile,
        "context": context,
        "devcontainer": devcontainer,
    }
    fields = {k: v for k, v in given.items() if v is not None}
    for key in ("image", "dockerfile", "context"):
        if fields.get(key) == "":
            fields[key] = None
    if env is not None:
        pairs = [e for e in env if e]
        if any("=" not in e for e in pairs):
            fail("--env takes KEY=VALUE")
        fields["env"] = dict(e.split("=", 1) for e in pairs)
    try:
        body = RepoUpdate.model_validate(fields)
    except ValidationError as exc:
        fail(validation_message(exc))
    with repo_store(server) as repos:
        _local_hint(server, repos, "set", "change it")
        row = repos.update(name, body)
        console.print(
            f"changed [bold]{row.name}[/]: {', '.join(sorted(body.model_fields_set))}; "
            + repos.rebuild_note(row.name),
            highlight=False,
        )


@app.command("remove")
def repos_remove(
    name: Annotated[str, typer.Argument(help="The repo's name, as listed")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    server: OnServerOption = None,
) -> None:
    """Remove a repo from this machine's data dir, or with --server URL from that server
    (DELETE /api/repos/{repo}): no new sessions, follow-ups, image builds or warm sandboxes;
    its sessions and pull requests stay readable. `repos add` with the same name brings it
    back."""
    with repo_store(server) as repos:
        _local_hint(server, repos, "remove", "remove it")
        repo = repos.to_remove(name)  # an unknown repo fails before the question
        if not yes and repo.removed_at is None:
            typer.confirm(
                f"Remove {repo.name} ({repo.forge}: {repo.url})? Sessions already running "
                "finish; no new ones start",
                abort=True,
            )
        row = repos.remove(name)
        console.print(
            f"removed [bold]{row.name}[/]: its sessions and pull requests stay readable; "
            f"`nightshift repos add {row.url} --name {row.name}{repos.server_flag}` brings it "
            "back",
            highlight=False,
        )


def _when(stamp: float | None) -> str:
    return utc_minute(stamp) if stamp else ""


@app.command("show")
def repos_show(
    name: Annotated[str, typer.Argument(help="The repo's name, as listed")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    server: OnServerOption = None,
) -> None:
    """Show a repo's effective spec: each value and where it came from."""
    with repo_store(server) as repos:
        detail = repos.detail(name)
    if as_json:
        print(detail.model_dump_json(indent=2))
        return
    console.print(
        f"[bold]{detail.name}[/] ({detail.forge}: {detail.url}, base {detail.base})\n"
        + (f"removed on {_when(detail.removed_at)}\n" if detail.removed_at else "")
        + f"environment: {detail.environment}"
        + (f" ({detail.environment_digest})\n" if detail.environment_digest else "\n")
        + (
            f"effective spec as of {detail.effective_at[:10]}"
            if detail.effective_at
            else "not built yet: the stored spec only"
        ),
        highlight=False,
    )
    table = Table("field", "value", "from")
    for item in detail.effective:
        value = item.value if isinstance(item.value, str) else json.dumps(item.value)
        table.add_row(item.field, value, item.origin)
    console.print(table)


@app.command("list")
def repos_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    removed: Annotated[
        bool, typer.Option("--removed", help="Include removed repositories, with when")
    ] = False,
    server: OnServerOption = None,
) -> None:
    """List registered repositories and the environment each uses (host, or its image)."""
    with repo_store(server) as repos:
        rows = repos.list(removed)
        if as_json:
            print(json.dumps([r.model_dump() for r in rows], indent=2))
            return
        columns = ("name", "forge", "base", "environment", "url")
        table = Table(*columns, *(("removed",) if removed else ()))
        for r in rows:
            cells = (r.name, r.forge, r.base, r.environment, r.url)
            table.add_row(*cells, *((_when(r.removed_at),) if removed else ()))
        console.print(table)
