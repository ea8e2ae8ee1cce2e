"""What every command module shares: the consoles, the error line, settings and the runtime.

A command reports a failure with `fail`, the one place that prints `error: …` and picks the
exit code; the libraries under a command raise their own errors and never exit the process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from app.errors import ServiceError
from app.settings import Settings

if TYPE_CHECKING:
    from app.runtime import Runtime


console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print the CLI's error line on stderr and exit with `code` (2: bad input or set-up)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, with the command's overrides; a bad value fails."""
    try:
        return Settings(**overrides)
    except ValueError as exc:
        fail(str(exc))


@contextlib.contextmanager
def runtime_from(settings: Settings) -> Iterator[Runtime]:
    """A started-up runtime for one command; a service error inside becomes the error line."""
    from app.runtime import build_runtime  # commands that talk to a server never load it

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
