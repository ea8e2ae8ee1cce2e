"""`nightshift serve`: the API, the web viewer and an in-process worker in one process."""

from __future__ import annotations

from typing import Annotated

import typer

from app.commands.common import console, fail, load_settings
from app.errors import ServiceError


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (NIGHTSHIFT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (NIGHTSHIFT_PORT)")] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes sharing the port (SO_REUSEPORT); process i also listens on "
            "port+1+i for the others, which forward it the requests of the sessions it owns",
        ),
    ] = 1,
    child: Annotated[int | None, typer.Option(hidden=True, min=0, max=63)] = None,
) -> None:
    """Serve the API, the web viewer and an in-process worker."""
    import uvicorn

    from app.main import create_app

    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = load_settings(**overrides)
    from workers.agent.plugins import PluginLoadError, load_plugins

    try:
        load_plugins(settings.agent_config().plugins)
    except PluginLoadError as exc:
        fail(str(exc))
    who = ""
    if settings.auth == "local":
        from app.services.users import git_identity

        try:
            name, email = git_identity()
        except ServiceError as exc:
            fail(str(exc))
        who = f" as {name} <{email}> (NIGHTSHIFT_AUTH=local)"
    if child is None:
        console.print(
            f"Nightshift is serving at [bold]{settings.base_url}[/]{who}\n"
            f"  web viewer  {settings.base_url}/\n  API docs    {settings.base_url}/docs\n"
            f"  data dir    {settings.data_dir.resolve()}\n"
            f"  model       {settings.model or 'not configured (set NIGHTSHIFT_MODEL)'}",
            highlight=False,
        )
    if processes > 1:
        from app.commands.processes import supervise

        last = settings.port + processes
        console.print(f"  processes   {processes}, peer ports {settings.port + 1}-{last}")
        raise typer.Exit(supervise(settings, processes, host, port))
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # Events are small JSON frames: compressing each costs more CPU than it saves.
        ws_per_message_deflate=False,
        # Open event streams (web pages) would hold shutdown forever; they reconnect anyway.
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    if child is None:
        server.run()
    else:  # one of `--processes N`: the shared port and its own peer port
        from app.commands.processes import child_sockets

        try:
            sockets = child_sockets(settings, child)
        except OSError as exc:
            fail(f"API process {child} cannot listen: {exc}", 3)
        server.run(sockets=sockets)
    if not server.started:
        raise typer.Exit(3)
