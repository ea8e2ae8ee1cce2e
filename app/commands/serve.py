"""`nightshift serve`: the API, the web viewer and an in-process worker in one process."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from app.commands.common import console, fail, load_settings
from app.errors import ServiceError


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (NIGHTSHIFT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (NIGHTSHIFT_PORT)")] = None,
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
    console.print(
        f"Nightshift is serving at [bold]{settings.base_url}[/]{who}\n"
        f"  web viewer  {settings.base_url}/\n  API docs    {settings.base_url}/docs\n"
        f"  data dir    {settings.data_dir.resolve()}\n"
        f"  model       {settings.model or 'not configured (set NIGHTSHIFT_MODEL)'}",
        highlight=False,
    )
    app = create_app(settings)
    options: dict[str, Any] = {
        "log_level": "info",
        # Events are small JSON frames: compressing each costs more CPU than it saves.
        "ws_per_message_deflate": False,
        # Open event streams (web pages) would hold shutdown forever; they reconnect anyway.
        "timeout_graceful_shutdown": 3,
    }
    if not settings.ide:
        uvicorn.run(app, host=settings.host, port=settings.port, **options)
        return
    from app.api.ide_proxy import create_ide_app
    from app.services.ide import ide_origin

    origin = ide_origin(settings)
    console.print(f"  VS Code     {origin}/ (NIGHTSHIFT_IDE=1)", highlight=False)
    servers = [
        uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, **options)),
        # The IDE's own origin: a second listener in this process, where the sandboxes are.
        uvicorn.Server(
            uvicorn.Config(
                create_ide_app(app, origin),
                host=settings.host,
                port=settings.ide_port,
                lifespan="off",
                **options,
            )
        ),
    ]

    async def both() -> None:
        running = [asyncio.ensure_future(s.serve()) for s in servers]
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*running, return_exceptions=True)

    asyncio.run(both())
