"""`nightshift bench ...`: benchmarks that print JSON (progress goes to stderr).

The benchmarks themselves live in `app.bench`; these are the typer commands around them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from app.bench import BenchError
from app.commands.common import err, fail, load_settings

app = typer.Typer(help="Benchmarks: each prints its figures as JSON.", no_args_is_help=True)


@contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nightshift-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@app.command("startup")
def bench_startup(
    sessions: Annotated[int, typer.Option(min=1, help="Sessions per mode")] = 5,
    files: Annotated[int, typer.Option(min=20, help="Tracked files in the generated repo")] = 5000,
    latency_ms: Annotated[int, typer.Option(min=0, help="Fake model latency per turn")] = 0,
    modes: Annotated[
        str, typer.Option(help="Comma-separated: cold,image,warm")
    ] = "cold,image,warm",
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory (printed)")] = False,
    image: Annotated[
        str | None,
        typer.Option(
            help="Declare this OCI image as the project's environment: also times its first "
            "pull and unpack; image mode's target becomes p50 ≤ 150 ms. Without python3 in "
            "the image the project has no set-up"
        ),
    ] = None,
    model_server: Annotated[
        bool,
        typer.Option(
            "--model-server",
            help="Run the sessions against an OpenAI-compatible HTTP model server on 127.0.0.1 "
            "instead of the scripted model, and time prompt → first request at that server "
            "(targets: warm p50 ≤ 60 ms, image p50 ≤ 80 ms)",
        ),
    ] = False,
) -> None:
    """Prompt → first model request, per start mode (cold, image, warm), as JSON.

    Generates a Python project (virtualenv, an offline dependency, a unittest suite, a
    `.nightshift.toml`), registers it in a scratch data dir, and runs SESSIONS sessions per
    mode against the built-in scripted model. Also times a plain `git clone` plus the set-up
    commands, the bar a cold start must not exceed.
    """
    from app.bench.startup import MODES, run_startup

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODES]
    if unknown or not wanted:
        fail(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")
    with _scratch(keep) as scratch:
        if keep:
            err.print(f"scratch directory: {scratch}")
        try:
            report = run_startup(
                scratch, files, wanted, sessions, latency_ms, err, image, model_server
            )
        except BenchError as exc:
            fail(str(exc))
        print(json.dumps(report, indent=2))


@app.command("load")
def bench_load(
    sessions: Annotated[int, typer.Option(help="Concurrent sessions", min=1)] = 200,
    latency_ms: Annotated[
        int, typer.Option("--latency-ms", help="Fake model latency per turn", min=0)
    ] = 1000,
    mode: Annotated[
        str, typer.Option(help="embedded (in-process), distributed (Celery on Redis) or both")
    ] = "embedded",
    workers: Annotated[int, typer.Option(help="Celery worker processes (distributed)", min=1)] = 2,
    processes: Annotated[
        int, typer.Option(help="API processes (`serve --processes N`)", min=1, max=64)
    ] = 1,
    worker_concurrency: Annotated[
        int | None, typer.Option(help="Sessions per worker (default: enough for all)", min=1)
    ] = None,
    idle_seconds: Annotated[
        float, typer.Option(help="How long finished sessions stay idle (memory is measured then)")
    ] = 60.0,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Control DB server (default: SQLite in the scratch dir); on PostgreSQL the run "
            "uses a fresh database there, dropped afterwards"
        ),
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option(help="Redis URL (default: a private redis-server)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the sessions")] = 600.0,
    keep: Annotated[bool, typer.Option(help="Keep the scratch directory and logs")] = False,
) -> None:
    """N concurrent sessions against a fake model: sessions completed, API p99 latency,
    event delivery lag p99 and memory per idle session, as JSON.

    The server (and in distributed mode Redis and the Celery workers) run as their own
    processes from a scratch directory; this process only plays the clients.
    """
    from app.bench.load import run_load
    from app.bench.stack import LoadConfig, Mode

    choices: dict[str, list[Mode]] = {
        "embedded": ["embedded"],
        "distributed": ["distributed"],
        "both": ["embedded", "distributed"],
    }
    if mode not in choices:
        fail(f"unknown mode {mode!r}; choose embedded, distributed or both")
    results = []
    for one in choices[mode]:
        config = LoadConfig(
            sessions=sessions,
            latency_ms=latency_ms,
            mode=one,
            workers=workers,
            processes=processes,
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
            fail(f"the {one} load benchmark failed: {type(exc).__name__}: {exc}", 1)
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


# ---------------------------------------------------------------- sandboxes

LOCAL_BACKENDS = ("bwrap", "gvisor")


@app.command("sandbox")
def bench_sandbox(
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Backend to measure (repeatable; default: bwrap and gvisor, plus modal when "
            "MODAL_TOKEN_ID is set)"
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=3, help="Samples for start and round-trip figures")] = 20,
    big: Annotated[bool, typer.Option(help="Also measure the 100 MB diff")] = True,
    crowd: Annotated[
        int,
        typer.Option(
            min=0, help="Also measure commands with this many other sandboxes alive (0: not)"
        ),
    ] = 0,
) -> None:
    """Start → first exec (p50/p95), exec round trip, snapshot and restore of a 1 MB and a
    100 MB diff, per backend, as JSON. A backend that cannot run here reports its error.
    With --crowd N, commands again with N other sandboxes alive (a busy host)."""
    import asyncio

    from images.sandboxes import BACKENDS, make_backend
    from images.sandboxes.base import SandboxError
    from images.sandboxes.bench import DIFF_SIZES, bench_backend, host_facts

    settings = load_settings()
    names = backend or [*LOCAL_BACKENDS, *(["modal"] if settings.modal_token_id else [])]
    for name in names:
        if name not in BACKENDS or name == "fake":
            fail(f"cannot benchmark {name!r}; choose from bwrap, gvisor, modal")
    sizes = DIFF_SIZES if big else {"1MB": DIFF_SIZES["1MB"]}
    config = settings.sandbox_config()
    results: list[dict[str, Any]] = []
    with err.status("benchmarking…") as status:
        for name in names:

            def make(state_dir: Path, name: str = name) -> Any:
                return make_backend(name, state_dir, config)

            try:
                results.append(
                    asyncio.run(
                        bench_backend(
                            make,
                            runs=runs,
                            crowd=crowd,
                            sizes=sizes,
                            progress=lambda m: status.update(m),
                        )
                    )
                )
            except (SandboxError, RuntimeError, OSError) as exc:
                results.append({"backend": name, "error": str(exc)})
    print(json.dumps({"benchmark": "sandbox", "host": host_facts(), "results": results}, indent=2))
