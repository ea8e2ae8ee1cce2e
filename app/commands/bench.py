"""`nightshift bench ...`: benchmarks that print JSON (other areas add their own)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Benchmarks; each prints JSON.", no_args_is_help=True)
err = Console(stderr=True)

LOCAL_BACKENDS = ("bwrap", "gvisor")


@app.command("sandbox")
def sandbox(
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Backend to measure (repeatable; default: bwrap and gvisor, plus "
            "modal when MODAL_TOKEN_ID is set)"
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=3, help="Samples for start and round-trip figures")] = 20,
    big: Annotated[bool, typer.Option(help="Also measure the 100 MB diff")] = True,
) -> None:
    """Start → first exec (p50/p95), exec round trip, snapshot and restore of a 1 MB and a
    100 MB diff, per backend, as JSON. A backend that cannot run here reports its error."""
    from app.cli import load_settings
    from images.sandboxes import BACKENDS, make_backend
    from images.sandboxes.base import SandboxError
    from images.sandboxes.bench import DIFF_SIZES, bench_backend, host_facts

    settings = load_settings()
    names = backend or [*LOCAL_BACKENDS, *(["modal"] if settings.modal_token_id else [])]
    for name in names:
        if name not in BACKENDS or name == "fake":
            from app.cli import fail

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
                            sizes=sizes,
                            progress=lambda msg: status.update(msg),
                        )
                    )
                )
            except (SandboxError, RuntimeError, OSError) as exc:
                results.append({"backend": name, "error": str(exc)})
    print(json.dumps({"host": host_facts(), "results": results}, indent=2))
