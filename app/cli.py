"""The `nightshift` command line: the typer app, and where each command module joins it.

Every command lives in `app/commands/`, one module per noun; what they share (the consoles,
the `error: …` line, settings, the runtime) is `app/commands/common.py`. This module only
registers them, in the order `nightshift --help` lists them.
"""

from __future__ import annotations

import sys

import typer

from app.commands import (
    bench,
    config,
    db,
    distributed,
    doctor,
    github,
    images,
    login,
    repos,
    run,
    sandbox,
    serve,
    sessions,
    slack,
    stats,
    tokens,
)

app = typer.Typer(
    help="Nightshift: background coding agents that end in a pull request in your name.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(serve.serve)
app.command()(run.run)
app.command()(sessions.attach)
app.command()(sessions.prompt)
app.command()(sessions.stop)
app.command()(login.login)
app.command()(distributed.worker)
app.command()(distributed.beat)
app.add_typer(repos.app, name="repos")
app.add_typer(sessions.app, name="sessions")
app.add_typer(tokens.app, name="tokens")
app.add_typer(github.app, name="github")
app.add_typer(slack.app, name="slack")
app.add_typer(images.app, name="images")
app.add_typer(bench.app, name="bench")
app.add_typer(db.app, name="db")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(config.app, name="config")
app.command()(doctor.doctor)
app.command()(stats.stats)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
