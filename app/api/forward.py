"""Forwarding a session's requests to the API process that owns it (several API processes).

Only a session's owner (`app/services/ownership.py`) writes its file and runs it, so a request
for `/api/sessions/{id}/...` (REST, SSE, the WebSocket) or `/internal/v1/sessions/{id}/...`
that reaches another process is passed on to the owner's peer URL: HTTP through httpx,
streamed both ways (an SSE stream stays open), a WebSocket relayed frame by frame with the
owner's close code. The client's own headers go along unchanged (its credential, cookie,
Host and Origin), so the owner authenticates and checks it exactly as if it had been asked
directly. A forwarded request carries `X-Nightshift-Peer`, an HMAC of its method and target
under the processes' shared secret; the process it reaches serves it when it owns the
session, else answers 503 (the session moved) rather than forwarding again, so a request
never loops. A client cannot forge the header without the secret (a bad one is refused with
403), and nothing but a session's own paths is ever forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from app.services.ownership import Owner, Ownership
from app.services.peers import PeerSigner
from workers.control_http import CLIENT_KEEP_ALIVE_S

log = logging.getLogger("nightshift.forward")

PEER_HEADER = b"x-nightshift-peer"
SESSION_PATH = re.compile(r"^/(?:api|internal/v1)/sessions/([0-9a-f]{12})(?:/[A-Za-z0-9_.~-]+)*/?$")
"""The paths of one session (ids are 12 hex digits; `/api/sessions/changes` is not one)."""
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"expect",
        PEER_HEADER,
    }
)
WS_HEADERS = frozenset({b"authorization", b"cookie", b"host", b"user-agent"})


class _HostAsSent(ClientConnection):
    """A WebSocket client that sends the original request's `Host` (given as an additional
    header) instead of the peer's address, so the owner checks Origin against it."""

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        made = self.protocol.connect

        def without_host() -> Any:
            request = made()
            del request.headers["Host"]
            return request

        self.protocol.connect = without_host  # type: ignore[method-assign]
        await super().handshake(*args, **kwargs)


class OwnerRouter:
    """ASGI middleware: serve a session here when this process owns it (claiming it when
    nobody live does), else forward the request to the owner."""

    def __init__(
        self, app: ASGIApp, owners: Callable[[], Ownership | None], signer: PeerSigner
    ) -> None:
        self.app = app
        self.owners = owners
        self.signer = signer
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=5.0, read=None),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=64,
                    keepalive_expiry=CLIENT_KEEP_ALIVE_S,
                ),
                trust_env=False,
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing(send))
            return
        owners = self.owners() if scope["type"] in ("http", "websocket") else None
        match = SESSION_PATH.match(scope.get("path", "")) if owners is not None else None
        if owners is None or match is None or ".." in scope["path"]:
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
        marks = [v for k, v in scope["headers"] if k == PEER_HEADER]
        if marks and not self.signer.valid(marks[0].decode("latin-1"), method, target):
            await _refuse(scope, receive, send, 403, "bad peer signature")
            return
        session_id = match.group(1)
        if owners.holds(session_id):  # the common case answers without a query
            owner: Owner | None = Owner(owners.process_id, owners.peer_url, True)
        else:
            owner = await asyncio.to_thread(owners.owner, session_id)
        if owner is None or owner.mine:
            if marks:  # a peer forwarded it: its signature is no business of the routes
                scope = dict(scope, headers=[h for h in scope["headers"] if h[0] != PEER_HEADER])
            await self.app(scope, receive, send)
        elif marks:
            # Forwarded here, but the session moved on meanwhile: the client asks again.
            await _refuse(scope, receive, send, 503, "the session moved to another process; retry")
        elif scope["type"] == "http":
            await self._forward(scope, receive, send, owner, target)
        else:
            await self._relay(scope, receive, send, owner, target)

    def _closing(self, send: Send) -> Send:
        """`send` for the lifespan: the client to the peers is closed, on the loop that used
        it, once the app has shut down."""

        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._client is not None:
                client, self._client = self._client, None
                await client.aclose()
            await send(message)

        return closing

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, owner: Owner, target: str
    ) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        headers.append((PEER_HEADER, self.signer.sign(scope["method"], target).encode()))
        client = self.client()
        # The query goes on byte for byte, as it was signed (httpx would re-quote some bytes).
        url = httpx.URL(owner.peer_url + scope["path"]).copy_with(
            query=scope.get("query_string", b"") or None
        )
        request = client.build_request(scope["method"], url, headers=headers, content=bytes(body))
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("forwarding %s to %s failed: %s", target, owner.peer_url, exc)
            await _refuse(scope, receive, send, 503, "the session's process did not answer; retry")
            return

        async def relay() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v)
                        for k, v in response.headers.raw
                        if k.lower() not in HOP_BY_HOP or k.lower() == b"content-length"
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone() -> None:  # a streamed answer (SSE) ends when its client leaves
            while (await receive())["type"] != "http.disconnect":
                pass

        await _first_of(relay(), gone())
        await response.aclose()

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, owner: Owner, target: str
    ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k in WS_HEADERS
        ]
        headers.append((PEER_HEADER.decode(), self.signer.sign("WEBSOCKET", target)))
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        url = "ws" + owner.peer_url.removeprefix("http") + target
        try:
            upstream = await connect(
                url,
                additional_headers=headers,
                origin=origin,
                user_agent_header=None,
                compression=None,
                proxy=None,
                open_timeout=10,
                max_size=None,
                create_connection=_HostAsSent,
                subprotocols=[Subprotocol(p) for p in scope.get("subprotocols") or ()] or None,
            )
        except InvalidStatus as exc:
            code = 4000 + exc.response.status_code
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": code, "reason": "refused by owner"})
            return
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("relaying %s to %s failed: %s", target, owner.peer_url, exc)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 4503, "reason": "owner unreachable"})
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        closed = False

        async def down() -> None:
            nonlocal closed
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
            code = upstream.close_code
            if code is None or code in (1005, 1006, 1015):
                code = 1000 if code != 1006 else 1011
            reason = upstream.close_reason or ""
            closed = True
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})

        async def up() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

        try:
            await _first_of(down(), up())
        finally:
            await upstream.close()
            if not closed:  # the owner's side failed first; a client already gone ignores it
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": 1011})


async def _first_of(*jobs: Any) -> None:
    """Run the coroutines until one ends; cancel the rest."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    if scope["type"] == "websocket":
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 4000 + status, "reason": detail})
        return
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
