"""Shedding load: a bounded backlog of session creations and follow-ups.

When prompts arrive faster than the API can write them, queueing them (in the server's thread
pool, behind the control DB) only turns a burst into seconds of latency for everyone, and
into timeouts a client cannot tell from failures. Instead, past `limit` requests in flight,
`POST /api/sessions` and `POST /api/sessions/{id}/prompts` are answered 503 with
`Retry-After` at once, on the event loop, before any work or any write: a shed request changed
nothing, so the client retries it as it is. A request let in is served to its end, so nothing
answered 2xx is ever lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_SHEDDABLE = re.compile(r"^/api/sessions(/[^/]+/prompts)?/?$")

Scope = dict[str, Any]


@dataclass
class Backlog:
    """How many prompts are being taken in, and how many were shed (one event loop: no lock)."""

    limit: int
    retry_after_s: int = 1
    in_flight: int = 0
    shed: int = 0


class PromptBacklog:
    """ASGI middleware: at most `backlog.limit` new sessions and follow-ups in flight."""

    def __init__(self, app: Any, backlog: Backlog) -> None:
        self.app = app
        self.backlog = backlog

    def _sheddable(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and _SHEDDABLE.match(scope.get("path", "")) is not None
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self._sheddable(scope):
            await self.app(scope, receive, send)
            return
        backlog = self.backlog
        if backlog.in_flight >= backlog.limit:
            backlog.shed += 1
            await self._refuse(send)
            return
        backlog.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            backlog.in_flight -= 1

    async def _refuse(self, send: Any) -> None:
        retry_after = self.backlog.retry_after_s
        body = json.dumps(
            {
                "detail": f"the server is taking in {self.backlog.limit} prompts already "
                "(NIGHTSHIFT_MAX_PENDING_CREATES); nothing was created: retry after "
                f"{retry_after}s"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
