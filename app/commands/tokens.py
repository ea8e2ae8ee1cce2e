"""`nightshift tokens create`: API tokens for people and tools."""

from __future__ import annotations

from typing import Annotated

import typer

from app.commands.common import err, load_settings, runtime_from

app = typer.Typer(help="API tokens for people and tools.", no_args_is_help=True)


@app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="The person's full name (used in commits)")],
    email: Annotated[str, typer.Option(help="The person's commit email")],
    login: Annotated[
        str | None, typer.Option(help="Login (default: the email's local part)")
    ] = None,
    label: Annotated[str, typer.Option(help="What the token is for")] = "cli",
) -> None:
    """Create a user (or update one) and print a new API token for them, once."""
    with runtime_from(load_settings()) as runtime:
        user = runtime.users.upsert(login or email.split("@")[0], name, email)
        token = runtime.users.create_token(user, label)
        err.print(f"token for {user.login} ({user.name} <{user.email}>); it is shown only once:")
        print(token)
