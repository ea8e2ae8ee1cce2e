"""`nightshift images build|list|show`: repo images, built now or listed with their logs."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.table import Table

from app.commands.common import console, fail, load_settings, runtime_from
from app.errors import ServiceError
from app.schemas_images import ImagePublic

if TYPE_CHECKING:
    from images.builder import BuildResult

app = typer.Typer(help="Repo images: fresh clones with set-up done.", no_args_is_help=True)


def _short(sha: str | None) -> str:
    return sha[:10] if sha else ""


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.1f} MB" if size is not None else ""


def _environment(r: ImagePublic) -> str:
    """`host`, or the declared image with the digest it was built on."""
    digest = f" @ {r.environment_digest[:19]}" if r.environment_digest else ""
    return f"{r.environment or ''}{digest}"


def _size(r: ImagePublic) -> str:
    """The image's own size, and the declared root it shares with other images."""
    shared = f" + {_mb(r.environment_size_bytes)} shared" if r.environment_size_bytes else ""
    own = _mb(r.size_bytes) or ("?" if shared else "")
    return f"{own}{shared}"


def _when(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(ts)) if ts else ""


@app.command("build")
def images_build(
    repos: Annotated[
        list[str] | None, typer.Argument(help="Repo names (default: every registered repo)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Build even when the base tip and spec are unchanged")
    ] = False,
) -> None:
    """Build repo images now: clone the base tip, run the set-up and warm commands."""
    with runtime_from(load_settings()) as runtime:
        names = repos or [r.name for r in runtime.repos.list()]
        if not names:
            fail("no repos registered yet: `nightshift repos add PATH` first")
        for name in names:
            runtime.repos.get(name)  # unknown names fail here, before any work
        status: dict[str, str] = {name: "waiting" for name in names}
        started = time.monotonic()

        def render() -> Table:
            table = Table(
                "repo", "build", title=f"building images ({time.monotonic() - started:.0f}s)"
            )
            for name, text in status.items():
                table.add_row(name, text)
            return table

        with Live(render(), console=console, refresh_per_second=8, transient=True) as live:

            def progress(repo: str, message: str) -> None:
                status[repo] = message
                live.update(render())

            from images.image_jobs import build_images  # (loaded only by a build)

            results: list[BuildResult] = runtime.executor.submit(
                lambda: build_images(
                    runtime.image_jobs, names, force=force, trigger="manual", progress=progress
                )
            ).result()
        failed = False
        for result in results:
            image = result.image
            if result.outcome == "built" and image is not None:
                console.print(
                    f"[green]✓[/] {result.repo}: built {image.id} at {_short(image.sha)} "
                    f"in {result.ms / 1000:.1f}s",
                    highlight=False,
                )
                for warning in result.warnings:
                    console.print(f"  [yellow]{warning}[/]", highlight=False)
            elif result.outcome == "skipped":
                console.print(f"[dim]· {result.repo}: {result.message}[/]", highlight=False)
            elif result.outcome == "busy":
                console.print(f"[yellow]· {result.repo}: {result.message}[/]", highlight=False)
            else:
                failed = True
                console.print(f"[bold red]✗ {result.repo}: {result.message}[/]", highlight=False)
                if image is not None and image.log:
                    console.print(image.log.rstrip(), markup=False, highlight=False)
        if failed:
            raise typer.Exit(1)


@app.command("list")
def images_list(
    repo: Annotated[str | None, typer.Option(help="Only this repo")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List image builds, newest first: environment (host, or the declared image and its
    digest), size on disk (and the shared declared root), time per set-up step, and the error
    of failed ones."""
    with runtime_from(load_settings()) as runtime:
        rows = runtime.images.images(repo, limit)
        if as_json:
            print(json.dumps([r.model_dump() for r in rows], indent=2))
            return
        table = Table()
        table.add_column("id", no_wrap=True)
        columns = (
            "repo",
            "status",
            "sha",
            "environment",
            "size",
            "built",
            "took",
            "steps",
            "error",
        )
        for name in columns:
            table.add_column(name)
        for r in rows:
            took = f"{r.duration_ms / 1000:.1f}s" if r.duration_ms is not None else ""
            style = {"ready": "green", "failed": "red", "building": "yellow"}.get(r.status, "dim")
            table.add_row(
                r.id,
                r.repo,
                f"[{style}]{r.status}[/]",
                _short(r.sha),
                _environment(r),
                _size(r),
                _when(r.built_at),
                took,
                " ".join(f"{s.ms / 1000:.1f}s" for s in r.steps),
                (r.error or "")[:80],
            )
        console.print(table)


@app.command("show")
def images_show(image_id: Annotated[str, typer.Argument(help="Image id")]) -> None:
    """Show one build with its whole log."""
    with runtime_from(load_settings()) as runtime:
        try:
            image = runtime.images.get(image_id)
        except ServiceError as exc:
            fail(str(exc))
        console.print_json(image.model_dump_json(exclude={"log"}))
        if image.log:
            console.print(image.log.rstrip(), markup=False, highlight=False)
