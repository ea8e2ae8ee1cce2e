"""Shedding load: a bounded backlog of session creations and follow-ups.

When prompts arrive faster than the API can write them, queueing them (in the server's thread
pool, behind the control DB) only turns a burst into seconds of latency for everyone, and
into timeouts a client cannot tell from failures. Instead, `POST /api/sessions` and
`POST /api/sessions/{id}/prompts` take one of `limit` slots; a request that finds none free
waits at most `wait_s` for one (slots free up every few milliseconds under a burst, so this
keeps the server busy without letting anyone wait long), in arrival order, and is otherwise
answered 503 with `Retry-After`, on the event loop, before any work or any write: a shed
request changed nothing, so the client retries it as it is. A request let in is served to its
end, so nothing answered 2xx is ever lost.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

_SHEDDABLE = re.compile(r"^/api/sessions(/[^/]+/prompts)?/?$")

Scope = dict[str, Any]
WAITERS_PER_SLOT = 4
"""At most this many requests per slot wait for one; past that they are shed at once."""


@dataclass
class Backlog:
    """How many prompts are being taken in, who waits for a slot, and how many were shed
    (one event loop: no lock)."""

    limit: int
    wait_s: float = 0.0
    retry_after_s: int = 1
    in_flight: int = 0
    shed: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)

    async def enter(self) -> bool:
        """Take a slot, waiting up to `wait_s` for one; False when none came."""
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return True
        if self.wait_s <= 0 or len(self.waiting) >= WAITERS_PER_SLOT * self.limit:
            return False  # no waiting, or a queue that long would not drain within `wait_s`
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(handed)
        try:
            await asyncio.wait_for(asyncio.shield(handed), self.wait_s)
            return True
        except TimeoutError:
            pass
        except BaseException:  # the client went away while it waited
            if handed.done() and not handed.cancelled():
                self.leave()  # the slot was handed over meanwhile: pass it on
            else:
                self._forget(handed)
            raise
        if handed.done() and not handed.cancelled():
            return True  # handed over as the wait ran out
        self._forget(handed)
        return False

    def _forget(self, handed: asyncio.Future[None]) -> None:
        handed.cancel()
        if handed in self.waiting:
            self.waiting.remove(handed)

    def leave(self) -> None:
        """Give the slot back, straight to the longest waiter if there is one."""
        while self.waiting:
            handed = self.waiting.popleft()
            if not handed.done():
                handed.set_result(None)  # the slot is now its own: `in_flight` stays
                return
        self.in_flight -= 1


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
        if not await backlog.enter():
            backlog.shed += 1
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            backlog.leave()

    async def _refuse(self, send: Any) -> None:
        retry_after = self.backlog.retry_after_s
        body = json.dumps(
            {
                "detail": f"the server is taking in {self.backlog.limit} prompts already "
                "(NIGHTSHIFT_MAX_PENDING_CREATES) and none finished within "
                f"{self.backlog.wait_s * 1000:g} ms (NIGHTSHIFT_MAX_PENDING_WAIT_MS); nothing "
                f"was created: retry after {retry_after}s"
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
