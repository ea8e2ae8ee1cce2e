"""The IDE origin: a listener of its own (NIGHTSHIFT_IDE_PORT, NIGHTSHIFT_IDE_ORIGIN) that shows
code-server, and nothing else.

code-server's pages come from the sandbox, which the agent (and whatever it ran) can rewrite, so
they must not run where the API's pages do: on the API's origin they could read its responses
and act as the viewer. Here they run on another origin, and:

- a request gets in only with this origin's cookie, got by redeeming a single-use ticket the API
  issued to a participant (`app/services/ide.py`), scoped to that session's path; without it
  every path answers 403 and every WebSocket closes with 4403;
- the viewer's credentials never reach code-server: `Authorization`, the API's sign-in cookie
  and this origin's cookie are taken out of what is forwarded, and code-server cannot set either
  cookie;
- the API refuses every request whose `Origin` is this one (`app/api/hosts.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Origin

from app.api.credentials import COOKIE_NAME
from app.api.deps import api_ides
from app.api.hosts import LOOPBACK_NAMES, OriginCheck, _host_name
from app.errors import Forbidden, ServiceError
from app.services.ide import Ides, Running, path_of
from app.settings_sandbox import SESSION
from images.sandboxes.ide import IdeUnavailable

IDE_COOKIE = "nightshift_ide"
OURS = frozenset({COOKIE_NAME, IDE_COOKIE})
CHUNK = 64 * 1024
HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
DROPPED = HOP | {"authorization", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-host"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data: blob:; "
    "media-src 'self' data: blob:; connect-src 'self'; worker-src 'self' data: blob:; "
    "frame-src 'self' blob:; frame-ancestors 'self'; form-action 'self'; base-uri 'self'"
)
"""Added to every page code-server serves (on top of its own): its pages, which the sandbox
can rewrite, may load and reach only this origin, so they cannot hand the workspace to another
site through the viewer's browser by a request (a top-level navigation still could)."""


def forwarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers as code-server gets them: no credentials of ours, no hop-by-hop."""
    out = [(k, v) for k, v in headers if k.decode("latin-1").lower() not in DROPPED]
    kept = []
    for name, value in headers:
        if name.lower() == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):  # what cannot be parsed is not forwarded
                jar.load(value.decode("latin-1"))
            kept += [f"{k}={m.coded_value}" for k, m in jar.items() if k not in OURS]
    if kept:
        out.append((b"cookie", "; ".join(kept).encode("latin-1")))
    return out


def _sets_our_cookie(value: bytes) -> bool:
    name = value.split(b"=", 1)[0].strip().decode("latin-1")
    return name in OURS


def returned_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """code-server's response headers as the browser gets them: it may not set our cookies,
    and our content policy comes on top of its own."""
    kept = [
        (k.lower(), v)
        for k, v in headers
        if k.decode("latin-1").lower() not in HOP
        and not (k.lower() == b"set-cookie" and _sets_our_cookie(v))
    ]
    return [*kept, (b"content-security-policy", CSP.encode())]


def upstream_path(scope: Scope, session_id: str) -> bytes:
    """The request's path as code-server serves it: without the session's prefix, and still
    percent-encoded as the browser sent it (file names may hold spaces and `%`)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    prefix = path_of(session_id).encode()
    return b"/" + (raw[len(prefix) :] if raw.startswith(prefix) else b"")


def _refusal(exc: ServiceError) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


class IdeProxy:
    """The routes of the IDE origin, over the `Ides` service the API app holds."""

    def __init__(self, api: Any, secure: bool, per_session: bool) -> None:
        self.api = api
        self.secure = secure
        self.per_session = per_session

    @property
    def ides(self) -> Ides:
        return api_ides(self.api)

    async def http(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        rest = request.path_params.get("rest", "")
        wrong = _wrong_host(session_id, request.headers.get("host"), self.per_session)
        if wrong is not None:
            return _refusal(wrong)
        tickets = parse_qs(request.url.query).get("ticket")
        if tickets and rest == "" and request.method == "GET":
            return self._redeem(session_id, tickets[0])
        try:
            self.ides.check_enabled()
            user, running = await self.ides.admit(session_id, request.cookies.get(IDE_COOKIE))
        except ServiceError as exc:
            return _refusal(exc)
        self.ides.used(running, user)
        return await self._forward(request, running)

    def _redeem(self, session_id: str, ticket: str) -> Response:
        try:
            self.ides.check_enabled()
            token, _ = self.ides.redeem(session_id, ticket)
        except ServiceError as exc:
            refused = _refusal(exc)
            refused.headers["Referrer-Policy"] = "no-referrer"
            return refused
        # Relative: the ticket leaves the address bar at once, and is worth nothing after.
        answer = RedirectResponse("./", status_code=303)
        answer.set_cookie(
            IDE_COOKIE,
            token,
            path=path_of(session_id),
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )
        answer.headers["Referrer-Policy"] = "no-referrer"
        answer.headers["Cache-Control"] = "no-store"
        return answer

    async def _forward(self, request: Request, running: Running) -> Response:
        try:
            conn = await asyncio.to_thread(running.ide.connect)
        except (OSError, IdeUnavailable) as exc:
            return JSONResponse({"detail": f"the IDE cannot be reached: {exc}"}, 409)
        return _Relay(
            request, conn, upstream_path(request.scope, request.path_params["session_id"])
        )

    async def websocket(self, websocket: WebSocket) -> None:
        session_id = websocket.path_params["session_id"]
        try:
            wrong = _wrong_host(session_id, websocket.headers.get("host"), self.per_session)
            if wrong is not None:
                raise wrong
            self.ides.check_enabled()
            user, running = await self.ides.admit(session_id, websocket.cookies.get(IDE_COOKIE))
            conn = await asyncio.to_thread(running.ide.connect)
        except ServiceError as exc:
            await websocket.accept()
            await websocket.close(code=4000 + exc.status_code, reason=str(exc)[:120])
            return
        except (OSError, IdeUnavailable) as exc:
            await websocket.accept()
            await websocket.close(code=4409, reason=f"the IDE cannot be reached: {exc}"[:120])
            return
        query = websocket.url.query
        path = upstream_path(websocket.scope, session_id).decode("latin-1")
        target = f"ws://{websocket.headers.get('host', 'localhost')}{path}"
        upstream_headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in forwarded_headers(list(websocket.scope["headers"]))
            if not k.lower().startswith(b"sec-websocket") and k.lower() != b"origin"
        ]
        offered = websocket.scope.get("subprotocols") or []
        try:
            upstream = await ws_connect(
                target + (f"?{query}" if query else ""),
                sock=conn,
                origin=Origin(websocket.headers["origin"])
                if "origin" in websocket.headers
                else None,
                additional_headers=upstream_headers,
                subprotocols=offered or None,
                max_size=None,
                ping_interval=None,
                compression=None,
            )
        except (OSError, WebSocketException) as exc:
            conn.close()
            await websocket.accept()
            await websocket.close(code=1011, reason=f"the IDE refused the socket: {exc}"[:120])
            return
        await websocket.accept(subprotocol=upstream.subprotocol)
        with running.attendance.watching():
            await _relay_ws(websocket, upstream, lambda: self.ides.used(running, user))


class _Relay(Response):
    """One request to code-server over its socket (h11), streamed both ways."""

    def __init__(self, request: Request, conn: socket.socket, path: bytes) -> None:
        super().__init__()
        self.request = request
        self.conn = conn
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self.conn)
        try:
            await self._exchange(scope, receive, send, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        client = h11.Connection(h11.CLIENT)
        query = scope.get("query_string", b"")
        target = self.path + (b"?" + query if query else b"")
        headers = forwarded_headers(list(scope["headers"]))
        host = dict(scope["headers"]).get(b"host", b"localhost")
        chunked = any(
            k.lower() == b"transfer-encoding" and b"chunked" in v.lower()
            for k, v in scope["headers"]
        )
        extra = [(b"host", host), (b"connection", b"close")]
        if chunked:
            extra.append((b"transfer-encoding", b"chunked"))
        request = h11.Request(method=scope["method"], target=target, headers=[*extra, *headers])
        writer.write(client.send(request))
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            if body:
                writer.write(client.send(h11.Data(data=body)))
            if not message.get("more_body", False):
                break
        writer.write(client.send(h11.EndOfMessage()))
        await writer.drain()
        started = False
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await reader.read(CHUNK))
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                await send(
                    {
                        "type": "http.response.start",
                        "status": event.status_code,
                        "headers": returned_headers(list(event.headers)),
                    }
                )
                started = True
            elif isinstance(event, h11.Data) and started:
                await send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                if not started:
                    raise ConnectionError("code-server closed the connection without answering")
                await send({"type": "http.response.body", "body": b""})
                return


async def _relay_ws(websocket: WebSocket, upstream: Any, used: Any) -> None:
    """Carry messages both ways until either side ends."""

    async def from_browser() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            used()
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def to_browser() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)

    tasks = [asyncio.create_task(from_browser()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await websocket.close()


def ide_hosts(origin: str) -> list[str]:
    """The names the IDE listener answers to: its origin's host (and loopback's, if it is), or
    every name under it when each session has its own (`{session}.host`)."""
    host = _host_name(urlsplit(origin.replace(SESSION, "session")).hostname or "localhost")
    if SESSION in origin:
        return ["*." + host.split(".", 1)[1]]
    return list(dict.fromkeys([host, *(LOOPBACK_NAMES if host in LOOPBACK_NAMES else ())]))


def _wrong_host(session_id: str, host: str | None, per_session: bool) -> ServiceError | None:
    """With a host name per session, a session's IDE is served only on its own."""
    label = (host or "").split(":", 1)[0].split(".", 1)[0].lower()
    if per_session and label != session_id.lower():
        return Forbidden(f"session {session_id}'s IDE is served at its own address, not here")
    return None


def create_ide_app(api: Any, origin: str) -> Starlette:
    """The IDE origin's app, over the `Ides` of the API app `api` (read from its state when a
    request comes: the API builds it in its lifespan)."""
    proxy = IdeProxy(api, secure=origin.startswith("https://"), per_session=SESSION in origin)
    pattern = "/api/sessions/{session_id}/ide/{rest:path}"
    return Starlette(
        routes=[
            Route(pattern, proxy.http, methods=METHODS),
            WebSocketRoute(pattern, proxy.websocket),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=ide_hosts(origin), www_redirect=False),
            Middleware(OriginCheck, public_url=None if SESSION in origin else origin),
        ],
    )
