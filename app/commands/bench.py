"""`nightshift bench ...`: benchmarks that print JSON. Each area adds its command here."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from app.cli import err

bench_app = typer.Typer(help="Benchmarks on this machine; each prints JSON.", no_args_is_help=True)


@bench_app.command("load")
def load(
    sessions: Annotated[int, typer.Option(help="Concurrent sessions", min=1)] = 200,
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", help="Fake model latency per turn", min=0)
    ] = 1000,
    mode: Annotated[
        Literal["embedded", "distributed", "both"],
        typer.Option(help="In-process dispatch, Celery workers on Redis, or both"),
    ] = "embedded",
    workers: Annotated[int, typer.Option(help="Celery worker processes (distributed)", min=1)] = 2,
    worker_concurrency: Annotated[
        int | None, typer.Option(help="Sessions per worker (default: enough for all)", min=1)
    ] = None,
    idle_seconds: Annotated[
        float, typer.Option(help="How long finished sessions stay idle (memory is measured then)")
    ] = 60.0,
    database_url: Annotated[
        str | None, typer.Option(help="Control DB URL (default: SQLite in the scratch dir)")
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: a private redis-server)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the sessions")] = 600.0,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory and logs")] = False,
) -> None:
    """N concurrent sessions against a fake model: sessions completed, API p99 latency,
    event delivery lag p99 and memory per idle session, as JSON."""
    from app.loadbench import LoadConfig, run_load

    modes: list[Literal["embedded", "distributed"]] = (
        ["embedded", "distributed"] if mode == "both" else [mode]
    )
    results = []
    for one in modes:
        config = LoadConfig(
            sessions=sessions,
            latency_ms=latency_ms,
            mode=one,
            workers=workers,
            worker_concurrency=worker_concurrency,
            idle_seconds=idle_seconds,
            database_url=database_url,
            broker_url=broker_url,
            timeout_s=timeout,
            keep=keep,
            progress=lambda msg: err.print(f"[dim]· {msg}[/]", highlight=False),
        )
        try:
            results.append(run_load(config))
        except Exception as exc:
            err.print(
                f"[bold red]error:[/] the {one} load benchmark failed: {type(exc).__name__}: {exc}",
                highlight=False,
            )
            raise typer.Exit(1) from exc
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
