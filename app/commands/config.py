"""`nightshift config show`: the effective settings, secrets masked, and where each came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.commands.common import fail, load_settings

app = typer.Typer(
    help="The deployment's settings: environment, .env and nightshift.toml (NIGHTSHIFT_CONFIG).",
    no_args_is_help=True,
)


@app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead")] = False,
) -> None:
    """Print every setting's value (secrets masked) and where it came from: default, the
    settings file, .env or an environment variable."""
    from app.config_view import effective_settings

    settings = load_settings()
    try:
        rows = effective_settings(settings)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps([row.model_dump() for row in rows], indent=2))
        return
    # Plain text, not rich: a masked value is `[redacted]`, which rich would read as markup.
    shown = [(r.name, "" if r.value is None else str(r.value), r.source) for r in rows]
    width = max(len(name) for name, _, _ in shown)
    value_width = min(48, max(len(value) for _, value, _ in shown))
    for name, value, source in shown:
        typer.echo(f"{name:<{width}}  {value:<{value_width}}  {source}")
