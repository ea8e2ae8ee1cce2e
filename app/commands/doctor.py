"""`nightshift doctor`: one line per thing a deployment needs, with the fix when it is missing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer

from app.commands.common import load_settings

MARKS = {"ok": "ok", "failed": "FAILED", "warning": "warning", "skipped": "skipped"}


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead")] = False,
    min_free_gb: Annotated[
        float, typer.Option(help="Free space the data dir's disk needs, in GB", min=0)
    ] = 5.0,
) -> None:
    """Check what this deployment needs, one line per check with the fix.

    Sandbox, model, GitHub App, webhooks and sign-in, Slack (and Socket Mode), public URL,
    Redis and PostgreSQL (distributed mode), and disk space. Exits 1 when a check fails; a
    check that does not apply says `skipped` and why."""
    from app.doctor import run_checks

    settings = load_settings()
    checks = asyncio.run(run_checks(settings, min_free_gb))
    if as_json:
        typer.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            fix = f" — fix: {check.fix}" if check.fix else ""
            typer.echo(f"{MARKS[check.status]:<8} {check.name:<{width}}  {check.detail}{fix}")
    if any(c.status == "failed" for c in checks):
        raise typer.Exit(1)
