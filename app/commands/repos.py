"""`nightshift repos add|set|remove|show|list`: the repositories Nightshift can work on."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from app.commands.common import console, fail, load_settings, runtime_from
from app.schemas import RepoCreate, RepoUpdate
from app.services.repo_catalog import spec_of
from app.services.repos import validation_message
from images.environments import uncommitted_spec_warning

app = typer.Typer(help="Repositories Nightshift can work on.", no_args_is_help=True)


@app.command("add")
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
) -> None:
    """Register a repository in this deployment's data dir (NIGHTSHIFT_DATA_DIR), where a
    server serving it finds it; not through a server named by NIGHTSHIFT_SERVER (a client's
    setting: register there with POST /api/repos)."""
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
    from app.commands.remote import server_url

    settings = load_settings()
    with runtime_from(settings) as runtime:
        row = runtime.repos.add(body)
        console.print(
            f"added [bold]{row.name}[/] ({row.forge}: {row.url}, base {row.base}) in the data "
            f"dir {settings.data_dir.resolve()}",
            highlight=False,
        )
        if server_url(None)[1]:
            console.print(
                "[yellow]NIGHTSHIFT_SERVER is set, but `repos add` registers in the data dir "
                "above, not on that server: a server on another data dir registers it with "
                "POST /api/repos[/]",
                highlight=False,
            )
        warning = uncommitted_spec_warning(spec_of(row))
        if warning:
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
) -> None:
    """Change a registered repo in this deployment's data dir: the options given, the rest
    kept (name and url never change). Over the API: PATCH /api/repos/{repo}."""
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
    settings = load_settings()
    with runtime_from(settings) as runtime:
        row = runtime.repos.update(name, body)
    console.print(
        f"changed [bold]{row.name}[/]: {', '.join(sorted(body.model_fields_set))}; a server on this "
        "data dir builds its image again at its next check (`nightshift images build "
        f"{row.name}` builds it now)",
        highlight=False,
    )


@app.command("remove")
def repos_remove(
    name: Annotated[str, typer.Argument(help="The repo's name, as listed")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
) -> None:
    """Remove a repo from this deployment's data dir: no new sessions, follow-ups, image
    builds or warm sandboxes; its sessions and pull requests stay readable. `repos add`
    with the same name brings it back. Over the API: DELETE /api/repos/{repo}."""
    with runtime_from(load_settings()) as runtime:
        repo = runtime.repos.get(name)  # an unknown or removed repo fails before the question
        if not yes:
            typer.confirm(
                f"Remove {repo.name} ({repo.forge}: {repo.url})? Sessions already running "
                "finish; no new ones start",
                abort=True,
            )
        row = runtime.repos.remove(name)
    console.print(
        f"removed [bold]{row.name}[/]: its sessions and pull requests stay readable; "
        f"`nightshift repos add {row.url} --name {row.name}` brings it back",
        highlight=False,
    )


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp)) + " UTC" if stamp else ""


@app.command("show")
def repos_show(
    name: Annotated[str, typer.Argument(help="The repo's name, as listed")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show a repo's effective spec: each value and where it came from."""
    with runtime_from(load_settings()) as runtime:
        detail = runtime.images.repo_detail(name)
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
) -> None:
    """List registered repositories and the environment each uses (host, or its image)."""
    with runtime_from(load_settings()) as runtime:
        rows = runtime.repos.list(removed=removed)
        if as_json:
            from app.schemas import RepoPublic

            print(json.dumps([RepoPublic.model_validate(r).model_dump() for r in rows], indent=2))
            return
        columns = ("name", "forge", "base", "environment", "url")
        table = Table(*columns, *(("removed",) if removed else ()))
        for r in rows:
            environment = runtime.images.repo_detail(r.name).environment
            cells = (r.name, r.forge, r.base, environment, r.url)
            table.add_row(*cells, *((_when(r.removed_at),) if removed else ()))
        console.print(table)
