"""The benchmarks behind `nightshift bench`; the typer commands are in `app.commands.bench`.

A benchmark that cannot go on raises `BenchError`; the command turns it into the CLI's error
line, so no benchmark exits the process itself.
"""

from __future__ import annotations

from app.errors import AppError


class BenchError(AppError):
    """A benchmark could not produce its figures (a build failed, a session never finished)."""
