"""Who is calling: the one reader of a caller's credential, and the one check of it.

A credential is an API token (`Authorization: Bearer <token>`, or `?token=` on event streams,
whose browsers cannot set headers) or, when no token came, the browser's sign-in cookie (a web
session id, `app/services/websessions.py`). `read_credential` is the only code that parses
them; `Authenticator` turns one into a user. The dependencies built on them are in `deps.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from app.errors import Unauthorized
from app.models import User
from app.services.users import Users
from app.services.websessions import WebSessions
from app.settings import Settings

COOKIE_NAME = "nightshift_session"
"""The browser sign-in cookie: a web session id (see `app/services/websessions.py`)."""


@dataclass(frozen=True)
class Credential:
    """What a request carries: a token, else the sign-in cookie (never both)."""

    token: str | None = None
    cookie: str | None = None
    from_header: bool = False
    """Whether the token came in the `Authorization` header (not `?token=`)."""


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for any other header."""
    if not header or not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


def read_credential(
    conn: HTTPConnection, *, query: bool = False, tokens: bool = True
) -> Credential:
    """The caller's credential: the bearer header, then `?token=` when `query` (streams), then
    the sign-in cookie. `tokens=False` reads the browser's cookie alone (pages that act only
    for whoever the browser is signed in as)."""
    token = bearer_token(conn.headers.get("authorization")) if tokens else None
    if token:
        return Credential(token=token, from_header=True)
    token = (conn.query_params.get("token") or None) if tokens and query else None
    if token:
        return Credential(token=token)
    return Credential(cookie=conn.cookies.get(COOKIE_NAME))


class BearerCredential(SecurityBase):
    """`read_credential` as a FastAPI security dependency: it declares `Authorization: Bearer`
    in the OpenAPI document (as `HTTPBearer`), and reads the header and cookie."""

    def __init__(self, description: str) -> None:
        self.model = HTTPBearerModel(description=description)
        self.scheme_name = "HTTPBearer"

    async def __call__(self, conn: HTTPConnection) -> Credential:
        return read_credential(conn)  # headers only: on the event loop, not a thread


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


class Authenticator:
    """Turns a credential into a user: a valid API token's user, else the signed-in browser's
    user, else the local user when NIGHTSHIFT_AUTH=local."""

    def __init__(self, users: Users, web_sessions: WebSessions, settings: Settings) -> None:
        self.users = users
        self.web_sessions = web_sessions
        self.settings = settings
        self._local_user: User | None = None

    @property
    def local(self) -> bool:
        return self.settings.auth == "local"

    def user(self, credential: Credential) -> User:
        if credential.token:
            return self.users.authenticate(credential.token)
        if credential.cookie:
            try:
                return self.web_sessions.authenticate(credential.cookie)
            except Unauthorized:
                if not self.local:
                    raise
        if self.local:
            if self._local_user is None:
                self._local_user = self.users.local_user()
            return self._local_user
        raise Unauthorized("authentication required: send `Authorization: Bearer <token>`")

    def known(self, credential: Credential) -> User | None:
        """The credential's user when it can be told without I/O (a token seen valid
        recently, the local user once looked up); None when only `user` can tell."""
        if credential.token:
            return self.users.cached(credential.token)
        if not credential.cookie and self.local:
            return self._local_user
        return None

    def viewer(self, conn: HTTPConnection) -> User | None:
        """Whoever the browser is signed in as (session cookie, or the local user), if anyone."""
        try:
            return self.user(read_credential(conn, tokens=False))
        except Unauthorized:
            return None

    def same_origin(self, headers: Any, url_scheme: str) -> bool:
        """Whether a browser request comes from one of our own pages: its `Origin` (or
        `Referer`) is our public URL or the host it was sent to. Browsers send `Origin` on every
        cross-site POST and WebSocket, so a forged request from another site fails this check."""
        own = {_origin(self.settings.base_url)}
        host = headers.get("host")
        if host:
            own.add(_origin(f"{url_scheme}://{host}"))
        origin = headers.get("origin")
        if origin:
            return origin != "null" and _origin(origin) in own
        referer = headers.get("referer")
        if referer:
            return _origin(referer) in own
        return headers.get("sec-fetch-site") in ("same-origin", "none")

    def websocket_credential(self, conn: HTTPConnection) -> Credential:
        """What a WebSocket's caller presents; its cookie counts only when the page is on this
        site."""
        credential = read_credential(conn, query=True)
        scheme = "https" if conn.url.scheme == "wss" else "http"
        if credential.cookie and not self.same_origin(conn.headers, scheme):
            # Cross-site WebSocket hijacking: a foreign page must not ride the cookie.
            raise Unauthorized("cross-site WebSocket refused: connect from this site")
        return credential

    async def user_async(self, credential: Credential) -> User:
        """`user` from an event loop: answered there when no I/O is needed (`known`), else
        on a thread."""
        known = self.known(credential)
        if known is not None:
            return known
        return await run_in_threadpool(self.user, credential)
