"""`nightshift serve`: the API, the web viewer and an in-process worker in one process."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from app.commands.common import console, fail, load_settings
from app.errors import ServiceError
from app.log_writer import defer_log_writes
from workers.control_http import SERVER_KEEP_ALIVE_S


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
    if processes > 1 and settings.ide:
        fail(
            "VS Code in the browser (NIGHTSHIFT_IDE=1) runs in one API process: its origin is a "
            "second listener beside the sandboxes; serve without --processes to offer it"
        )
    if processes > 1:
        from app.commands.processes import supervise

        last = settings.port + processes
        console.print(f"  processes   {processes}, peer ports {settings.port + 1}-{last}")
        raise typer.Exit(supervise(settings, processes, host, port))
    app = create_app(settings)
    app.state.settle_heap_once_started = True
    options: dict[str, Any] = {
        "log_level": "info",
        # Events are small JSON frames: compressing each costs more CPU than it saves.
        "ws_per_message_deflate": False,
        # Open event streams (web pages) would hold shutdown forever; they reconnect anyway.
        "timeout_graceful_shutdown": 3,
        # Longer than our clients keep an idle connection, so none reuses one being closed.
        "timeout_keep_alive": SERVER_KEEP_ALIVE_S,
    }
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, **options))
    # Its access log and messages are written by a thread: an output nobody reads (a paused
    # terminal, a stalled pipe) drops lines instead of stopping every request.
    log_writer = defer_log_writes(["uvicorn", "uvicorn.access"])
    if child is not None:  # one of `--processes N`: the shared port and its own peer port
        from app.commands.processes import child_sockets

        try:
            sockets = child_sockets(settings, child)
        except OSError as exc:
            fail(f"API process {child} cannot listen: {exc}", 3)
        server.run(sockets=sockets)
    elif not settings.ide:
        server.run()
    else:
        _serve_with_ide(app, server, settings, options)
    log_writer.stop()
    if not server.started:
        raise typer.Exit(3)


def _serve_with_ide(app: Any, server: Any, settings: Any, options: dict[str, Any]) -> None:
    """The API and, on the IDE's own origin, a second listener in this process, where the
    sandboxes are."""
    import uvicorn

    from app.api.ide_proxy import create_ide_app
    from app.services.ide import ide_origin

    origin = ide_origin(settings)
    console.print(f"  VS Code     {origin}/ (NIGHTSHIFT_IDE=1)", highlight=False)
    ide_config = uvicorn.Config(
        create_ide_app(app, origin),
        host=settings.host,
        port=settings.ide_port,
        lifespan="off",
        log_config=None,  # logging is set up already, its writes deferred (`serve`)
        **options,
    )
    servers = [server, uvicorn.Server(ide_config)]

    async def both() -> None:
        running = [asyncio.ensure_future(s.serve()) for s in servers]
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for each in servers:
            each.should_exit = True
        await asyncio.gather(*running, return_exceptions=True)

    asyncio.run(both())
