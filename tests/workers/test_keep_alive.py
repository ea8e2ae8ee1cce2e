"""Our clients of the API never send a request on a connection the server may be closing:
they let an idle connection go well before `nightshift serve` does (`CLIENT_KEEP_ALIVE_S`
under `SERVER_KEEP_ALIVE_S`). With equal timeouts a request sent as the server closed its idle
connection failed with a read error (seen in `bench load`), and one that is not idempotent,
such as spawning a sub-session, could not be sent again."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from app.commands.client import Client
from tests.fakes.server import BackgroundServer
from workers.control_http import CLIENT_KEEP_ALIVE_S, SERVER_KEEP_ALIVE_S, HttpControlPlane


def _recording_server(ports: list[int]) -> FastAPI:
    app = FastAPI()

    @app.get("/internal/v1/repos")
    def repos(request: Request) -> list[object]:
        assert request.client is not None
        ports.append(request.client.port)  # one port per connection the client opened
        return []

    @app.get("/api/repos")
    def api_repos(request: Request) -> list[object]:
        return repos(request)

    return app


def test_the_worker_and_the_cli_let_an_idle_connection_go_before_the_server_does() -> None:
    assert CLIENT_KEEP_ALIVE_S <= SERVER_KEEP_ALIVE_S / 2
    ports: list[int] = []
    with BackgroundServer(_recording_server(ports)) as server:

        async def worker() -> None:
            control = HttpControlPlane(server.url, "token")
            try:
                await control.repo_specs()
                await control.repo_specs()  # at once: the same connection
                await asyncio.sleep(CLIENT_KEEP_ALIVE_S + 0.5)
                await control.repo_specs()  # idle past its expiry: a new one
            finally:
                await control.aclose()

        asyncio.run(worker())
        assert ports[0] == ports[1] != ports[2]

        ports.clear()
        cli = Client(server.url, token="t")
        try:
            cli.request("GET", "/api/repos")
            cli.request("GET", "/api/repos")
            asyncio.run(asyncio.sleep(CLIENT_KEEP_ALIVE_S + 0.5))
            cli.request("GET", "/api/repos")
        finally:
            cli.close()
        assert ports[0] == ports[1] != ports[2]
