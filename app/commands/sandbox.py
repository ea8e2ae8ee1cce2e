"""`nightshift sandbox exec`: one command in a fresh sandbox, an operator's probe."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.commands.common import err, fail, load_settings, runtime_from
from images.sandboxes import make_backend
from images.sandboxes.base import (
    ExecResult,
    ImageRef,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxSpec,
)
from images.sandboxes.overlay import chown_tree

if TYPE_CHECKING:
    from app.settings import Settings

app = typer.Typer(help="Sandboxes: run a command in a fresh one.", no_args_is_help=True)

LIMIT_NAMES = {
    "timeout": "wall-clock timeout",
    "sandbox_timeout": "sandbox lifetime",
    "memory": "memory limit",
    "cpu": "CPU-time limit",
    "output": "output flood",
}


def scratch_image(data_dir: Path, backend: SandboxBackend) -> ImageRef:
    """An empty workspace, for a probe that names no repository."""
    image_id = f"scratch-{secrets.token_hex(4)}"
    location = data_dir / "scratch" / image_id
    for sub in ("workspace", "home"):
        (location / "root" / sub).mkdir(parents=True)
    chown_tree(location / "root", backend.owner)
    return ImageRef(
        id=image_id,
        repo="",
        sha="",
        backend=backend.name,
        location=str(location),
        runtime=backend.runtime_version(),
        built_at=time.time(),
    )


def summary(result: ExecResult, sandbox: Sandbox) -> str:
    why = f" ({LIMIT_NAMES[result.ended_by]})" if result.ended_by else ""
    hit = [h for h in result.limits_hit if h != result.ended_by]
    also = f"; limits hit: {', '.join(hit)}" if hit else ""
    cut = "; output truncated" if result.truncated and "output" not in hit else ""
    return (
        f"exit {result.exit_code}{why} in {result.duration_ms} ms on {sandbox.backend} "
        f"sandbox {sandbox.id}{also}{cut}"
    )


@app.command("info")
def info(
    backend: Annotated[
        str | None, typer.Option(help="bwrap, gvisor, modal or fake (default NIGHTSHIFT_SANDBOX)")
    ] = None,
) -> None:
    """Print, as JSON, the backend, its runtime version, and how each limit is enforced here."""
    settings = load_settings(**({"sandbox": backend} if backend else {}))
    chosen = make_backend(settings.sandbox, settings.data_dir.resolve(), settings.sandbox_config())
    enforcement = chosen.enforcement()
    report: dict[str, object] = {
        "backend": chosen.name,
        "runtime": chosen.runtime_version(),
        "limits": asdict(settings.limits()),
    }
    if enforcement:
        report["enforcement"] = enforcement
    print(json.dumps(report, indent=2))


@app.command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_command(
    ctx: typer.Context,
    backend: Annotated[
        str | None, typer.Option(help="bwrap, gvisor, modal or fake (default NIGHTSHIFT_SANDBOX)")
    ] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", "-r", help="A registered repo: start from its image")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before the command is killed (124)")
    ] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory limit in MiB (137 past it)")] = None,
    egress: Annotated[
        str | None, typer.Option(help="Hosts the command may reach, comma-separated")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Run CMD in a fresh sandbox; print its output and exit with its exit code.

    Example: nightshift sandbox exec --repo myrepo -- git log -1
    """
    argv = list(ctx.args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        fail("give the command after --, e.g. nightshift sandbox exec -- uname -a")
    overrides: dict[str, object] = {}
    if backend:
        overrides["sandbox"] = backend
    if memory_mb:
        overrides["sandbox_memory_mb"] = memory_mb
    settings = load_settings(**overrides)
    hosts = [h.strip().lower() for h in (egress or "").split(",") if h.strip()]
    if hosts:
        from pydantic import ValidationError

        from images.spec import RepoSpec

        try:
            hosts = RepoSpec(name="probe", url="probe", egress=hosts).egress
        except ValidationError as exc:
            fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
    try:
        result, sandbox = asyncio.run(_probe(settings, argv, repo, timeout, hosts))
    except SandboxError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({"sandbox": sandbox.id, "backend": sandbox.backend, **asdict(result)}))
    else:
        print(result.stdout, end="")
        err.print(result.stderr, end="", markup=False, highlight=False)
        err.print(f"[dim]{summary(result, sandbox)}[/]", highlight=False)
    raise typer.Exit(result.exit_code)


async def _probe(
    settings: Settings, argv: list[str], repo: str | None, timeout: float | None, hosts: list[str]
) -> tuple[ExecResult, Sandbox]:
    from app.services.repo_catalog import spec_of

    data_dir = settings.data_dir.resolve()
    scratch: Path | None = None
    if repo:
        with runtime_from(settings) as runtime:
            spec = spec_of(runtime.repos.get(repo))
            if hosts:
                spec = spec.model_copy(update={"egress": hosts})
            try:
                with err.status(f"preparing the image of {spec.name}…"):
                    acquired = await runtime.provider.acquire(spec, label="probe")
                return await _run(acquired.sandbox, argv, timeout)
            finally:
                # A cold start queues an image build on this loop; it must not outlive the
                # runtime it uses.
                await runtime.provider.cancel_background()
    backend = make_backend(settings.sandbox, data_dir, settings.sandbox_config())
    image = scratch_image(data_dir, backend)
    scratch = Path(image.location)
    try:
        sandbox = await backend.start(
            SandboxSpec(image, settings.limits(), egress=tuple(hosts), label="probe")
        )
    except SandboxError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        fail(str(exc))
    try:
        return await _run(sandbox, argv, timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def _run(
    sandbox: Sandbox, argv: list[str], timeout: float | None
) -> tuple[ExecResult, Sandbox]:
    try:
        result = await sandbox.exec(argv, timeout=timeout)
    finally:
        with suppress(SandboxError):
            await sandbox.terminate()
    return result, sandbox
