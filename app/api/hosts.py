"""Which names this server answers to, and which pages may write to it.

A server on loopback is still reachable from any web page the person opens: by DNS rebinding
(a hostile name re-pointed at 127.0.0.1, so the browser sends `Host: rebind.example:8000`) or by
a cross-site WebSocket, which browsers open without asking anyone. Two checks close both, for
every request, cookie or not:

- `Host` must be one of the server's own names (Starlette's `TrustedHostMiddleware`);
- a WebSocket or a state-changing request that carries `Origin` must come from a page on one of
  those names. Requests without `Origin` (the CLI, curl, webhooks) pass: browsers always send it
  on the requests this guards, and `Origin: null` (sandboxed frames, `file:` pages) is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _host_name(host: str) -> str:
    """A host as it appears in a `Host` header: lower case, IPv6 literals in brackets."""
    host = host.strip().lower().strip("[]")
    return f"[{host}]" if ":" in host else host


def _host_of(header: str | None) -> str | None:
    """The host of a `Host` header, without its port."""
    try:
        host = urlsplit(f"//{header}").hostname if header else None
    except ValueError:
        return None
    return _host_name(host) if host else None


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def server_names(settings: Settings) -> list[str]:
    """Every host name this server answers to (patterns as `TrustedHostMiddleware` reads them)."""
    names: list[str] = ["localhost"]
    bind = _address(settings.host)
    if bind is None or not bind.is_unspecified:
        names.append(_host_name(settings.host))  # 0.0.0.0 and :: are no one's name
    if bind is not None and (bind.is_loopback or bind.is_unspecified):
        names.extend(LOOPBACK_NAMES)
    for url in (settings.public_url, settings.control_url, settings.peer_url):
        host = urlsplit(url).hostname if url else None
        if host:
            names.append(_host_name(host))
    names.extend(n for n in settings.allowed_hosts.split(",") if n)
    return list(dict.fromkeys(names))


def _matches(host: str, pattern: str) -> bool:
    return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))


def _origin_of(url: str) -> str | None:
    """`scheme://host:port` of a URL, the default port spelled out; None when unusable."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https", "ws", "wss") or not host:
        return None
    secure = parts.scheme in ("https", "wss")
    return f"{'https' if secure else 'http'}://{_host_name(host)}:{port or (443 if secure else 80)}"


def _origin_pattern(origin: str) -> re.Pattern[str] | None:
    """A pattern of `origin` as `_origin_of` spells it, `{session}` matching one host label."""
    spelled = _origin_of(origin.replace("{session}", "session-label"))
    if spelled is None:
        return None
    return re.compile(re.escape(spelled).replace(re.escape("session-label"), "[a-z0-9-]+"))


class OriginCheck:
    """Refuse WebSockets and state-changing requests from pages on other sites (403).

    A page's origin is its scheme, host and port: a page on another port of the same machine
    (`http://localhost:3000`, someone's dev server) is another site. An origin passes when it is
    the address the request was sent to (its `Host`), the public URL, or a name the operator
    listed in NIGHTSHIFT_ALLOWED_HOSTS (any port: the operator named that host as ours).
    """

    def __init__(
        self,
        app: ASGIApp,
        extra_hosts: Sequence[str] = (),
        public_url: str | None = None,
        refused: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.patterns = [p.lower() for p in extra_hosts if p and p != "*"]
        self.public = _origin_of(public_url) if public_url else None
        self.refused = [p for p in map(_origin_pattern, refused) if p]
        """Origins refused on every request, reads too: the IDE's, whose pages the sandbox
        writes (`app/api/ide_proxy.py`); `{session}` in one stands for any host label."""

    def allows(self, origin: str, host_header: str | None, scheme: str) -> bool:
        own = _origin_of(origin)
        if origin == "null" or own is None or not own.startswith(("http://", "https://")):
            return False
        if host_header and own == _origin_of(f"{scheme}://{host_header}"):
            return True
        if own == self.public:
            return True
        name = own.split("://", 1)[1].rsplit(":", 1)[0]
        return any(_matches(name, p) for p in self.patterns)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refused and scope["type"] in ("http", "websocket"):
            origin = Headers(scope=scope).get("origin")
            own = _origin_of(origin) if origin is not None else None
            if origin is not None and own and any(p.fullmatch(own) for p in self.refused):
                await _refuse(scope, receive, send, origin, "the IDE's origin may not use the API")
                return
        guarded = scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] not in SAFE_METHODS
        )
        if guarded:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
            if origin is not None and not self.allows(origin, headers.get("host"), scheme):
                await _refuse(scope, receive, send, origin)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, origin: str, why: str = "") -> None:
    detail = f"cross-site request refused: Origin {origin[:200]!r}: " + (
        why or "not one of this server's names (NIGHTSHIFT_PUBLIC_URL, NIGHTSHIFT_ALLOWED_HOSTS)"
    )
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
        "extensions", {}
    ):
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
        return
    await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
