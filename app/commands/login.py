"""`nightshift login`: keep an API token for a server, after the server has accepted it.

The token (from `nightshift tokens create` on the server, or `POST /api/tokens`) is checked
with `GET /api/me` before anything is written; it is then kept, per server URL, in
`$XDG_CONFIG_HOME/nightshift/credentials.json` (mode 0600), and every client command sends it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.commands.client import ApiError, store_token
from app.commands.common import console, fail
from app.commands.remote import ServerOption, make_client, server_url


def login(
    server: ServerOption = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="The API token (default: asked for, or read from stdin without a terminal)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check an API token against the server and keep it for the client commands."""
    url, _ = server_url(server)
    if token is None:
        if sys.stdin.isatty():
            token = typer.prompt(f"API token for {url}", hide_input=True)
        else:
            token = sys.stdin.readline()
    token = token.strip()
    if not token:
        fail("no token given (pass --token, or type it when asked)", 1)
    client = make_client(url, token=token)
    try:
        client.health()
        me = client.me()
        if me.get("user") is None:
            fail(f"{client.server} did not say who the token belongs to", 1)
        user = me["user"]
        path = store_token(client.server, token, user["login"])
    except ApiError as exc:
        message = str(exc)
        if exc.status == 401:
            message = f"{client.server} refused the token: {message.split(' (run')[0]}"
        fail(message, 1)
    finally:
        client.close()
    console.print(
        f"logged in to {client.server} as {user['login']} ({user['name']} <{user['email']}>); "
        f"token kept in {path}",
        highlight=False,
    )
