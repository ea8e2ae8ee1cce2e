"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.forward import OwnerRouter
from app.api.hosts import OriginCheck, server_names
from app.api.routes import (
    artifacts,
    auth,
    desktop,
    github,
    health,
    ide,
    images,
    internal,
    live,
    peers,
    pulls,
    repos,
    sessions,
    shared,
    signin,
    slack,
    stats,
    web,
)
from app.errors import ServiceError
from app.loop_lag import LoopLag
from app.overload import Backlog, PromptBacklog
from app.runtime import Runtime, build_runtime
from app.services.ide import ide_origin
from app.services.peers import PeerSigner
from app.settings import Settings, get_settings
from app.wiring import peer_secret
from workers.tuning import settle_heap

MAX_BODY_BYTES = 2 * 1024 * 1024


class BodyLimit:
    """Refuse request bodies over a limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now; the app sees a disconnect and whatever it sends is dropped.
                    refused = True
                    await _too_large(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded_send)


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body is larger than {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. Pass a `runtime` to share one with the caller (tests, `nightshift run`)."""
    settings = settings or (runtime.settings if runtime else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime or build_runtime(settings)
        app.state.runtime = rt
        if owned:
            app.state.desktops = rt.desktops
            app.state.ides = rt.ides
        if rt.slack is not None:  # the bot's prompts take the backlog's slots too
            rt.slack.intake.bind(app.state.prompt_backlog, asyncio.get_running_loop())
        app.state.loop_lag = LoopLag()
        app.state.loop_lag.start()
        if owned:
            rt.start()
        if getattr(app.state, "settle_heap_once_started", False):
            settle_heap()  # `nightshift serve` once started; tests leave it off
        try:
            yield
        finally:
            await app.state.loop_lag.stop()
            if owned:
                rt.close()

    app = FastAPI(
        title="Nightshift",
        version=version("nightshift"),
        description="Background coding agents: a prompt in, a pull request in your name out.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
        app.state.desktops = runtime.desktops
        app.state.ides = runtime.ides

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    if settings.peer_url:
        # Innermost: a request is checked (host, origin, size, backlog) before it is forwarded.
        app.add_middleware(
            OwnerRouter,
            owners=lambda: getattr(app.state, "runtime", None) and app.state.runtime.owners,
            signer=PeerSigner(peer_secret(settings)),
        )
    app.state.prompt_backlog = backlog = Backlog(
        settings.max_pending_creates, wait_s=settings.max_pending_wait_ms / 1000
    )
    app.add_middleware(PromptBacklog, backlog=backlog)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    # Outermost first: an unknown Host is refused before anything reads the request.
    names = server_names(settings)
    app.add_middleware(
        OriginCheck,
        extra_hosts=[n for n in settings.allowed_hosts.split(",") if n],
        public_url=settings.public_url,
        refused=[ide_origin(settings)] if settings.ide else [],
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=names, www_redirect=False)
    app.include_router(health.router)
    app.include_router(live.router)  # before sessions: `/api/sessions/changes` is not an id
    app.include_router(sessions.router)
    app.include_router(artifacts.router)
    app.include_router(shared.router)
    app.include_router(desktop.router)
    app.include_router(ide.router)
    app.include_router(images.router)  # before repos: its `/{repo:path}` would swallow `/warm`
    app.include_router(repos.router)
    app.include_router(pulls.router)
    app.include_router(stats.router)
    app.include_router(auth.router)
    app.include_router(github.router)
    app.include_router(slack.router)
    app.include_router(signin.router)
    app.include_router(web.router)
    app.include_router(internal.router)
    app.include_router(peers.router)
    web.mount_static(app)
    desktop.mount_novnc(app)
    return app
