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

`Retry-After` is whole seconds; a shed answer also carries `Nightshift-Retry-After-Ms`, the
backlog's own estimate of when a slot will be there for it (the requests ahead, waiting or
shed in the last second, times the recent interval between slots freeing, less the wait a
request is granted), spread by jitter so the clients shed together do not all come back at
once: the more are shed, the longer each is asked to stay away. Only a shed answer carries
that header: it is the mark our clients (`shed_retry_s`) retry on, as nothing was done.

Prompts that do not arrive as HTTP requests (the Slack bot's mentions and follow-ups) take
the same slots through `Intake`, from whatever event loop they run on. Nobody would retry one
that was refused (Slack was acknowledged long before, and the request is stored), so such a
prompt is not shed: it waits its turn, trying again as a shed client would, and the person is
told once that it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.metrics import DEFERRED, SHED, TAKING_IN

_SHEDDABLE = re.compile(r"^/api/sessions(/[^/]+/prompts)?/?$")

Scope = dict[str, Any]
WAITERS_PER_SLOT = 4
"""At most this many requests per slot wait for one; past that they are shed at once."""
RETRY_MS_HEADER = "nightshift-retry-after-ms"
RETRY_MS_BOUNDS = (50, 5000)
"""A shed request's hint is kept within these milliseconds."""


def shed_retry_s(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before sending a request again that the backlog shed (a 503 carrying
    `Nightshift-Retry-After-Ms`: nothing was done); None for any other answer, including a
    503 from elsewhere, which may have done part of its work."""
    if status != 503:
        return None
    try:
        hint = float(headers.get(RETRY_MS_HEADER, ""))
    except ValueError:
        return None
    if not math.isfinite(hint):
        return None
    low, high = RETRY_MS_BOUNDS
    return min(max(hint, low), high) / 1000


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
    interval_s: float = 0.05
    """Recent time between slots freeing while busy (moving average)."""
    _last_leave: float = 0.0
    _recent_sheds: deque[float] = field(default_factory=deque)

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

    def retry_hint_ms(self) -> int:
        """When a request shed now should come back: once the requests ahead of it have had
        their slots (those waiting for one, and those shed in the last second, which will be
        back), less the wait it will be granted then; jittered by ±50%. Called once per shed."""
        now = time.monotonic()
        recent = self._recent_sheds
        recent.append(now)
        while recent[0] < now - 1.0:
            recent.popleft()
        ahead = len(self.waiting) + len(recent)
        base = max(ahead * self.interval_s - self.wait_s, self.interval_s)
        low, high = RETRY_MS_BOUNDS
        return round(min(max(base * random.uniform(0.5, 1.5) * 1000, low), high))

    def leave(self) -> None:
        """Give the slot back, straight to the longest waiter if there is one."""
        now = time.monotonic()
        if now - self._last_leave < 1.0:  # busy: a gap longer than that is idleness
            self.interval_s += 0.2 * (now - self._last_leave - self.interval_s)
        self._last_leave = now
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
            SHED.inc()
            await self._refuse(send)
            return
        TAKING_IN.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            TAKING_IN.dec()
            backlog.leave()

    async def _refuse(self, send: Any) -> None:
        hint_ms = self.backlog.retry_hint_ms()
        retry_after = max(self.backlog.retry_after_s, math.ceil(hint_ms / 1000))
        body = json.dumps(
            {
                "detail": f"the server is taking in {self.backlog.limit} prompts already "
                "(NIGHTSHIFT_MAX_PENDING_CREATES) and none finished within "
                f"{self.backlog.wait_s * 1000:g} ms (NIGHTSHIFT_MAX_PENDING_WAIT_MS); nothing "
                f"was created: retry after {hint_ms} ms"
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
                    (RETRY_MS_HEADER.encode(), str(hint_ms).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Intake:
    """A backlog slot for a prompt that is not an HTTP request (see above), taken on the
    server's loop from any loop. Unbound (no server: a runtime without the app), it lets every
    prompt through."""

    def __init__(self) -> None:
        self.backlog: Backlog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deferred = 0
        """Prompts that found no slot at once and waited for one."""

    def bind(self, backlog: Backlog, loop: asyncio.AbstractEventLoop) -> None:
        """Take slots of `backlog`, which lives on `loop` (the server's)."""
        self.backlog, self._loop = backlog, loop

    @contextlib.asynccontextmanager
    async def slot(self, waits: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
        """Hold a slot for the body; when none is free within the backlog's wait, `waits()`
        (to tell the person) and wait for one."""
        backlog, loop = self.backlog, self._loop
        if backlog is None or loop is None or loop.is_closed():
            yield
            return
        if not await self._on_home(loop, backlog, backlog.enter()):
            self.deferred += 1
            DEFERRED.inc()
            with contextlib.suppress(Exception):  # telling them is a courtesy
                await waits()
            await self._on_home(loop, backlog, _patiently(backlog))
        TAKING_IN.inc()
        try:
            yield
        finally:
            TAKING_IN.dec()
            with contextlib.suppress(RuntimeError):  # the server's loop is gone: so are slots
                loop.call_soon_threadsafe(backlog.leave)

    @staticmethod
    async def _on_home(
        loop: asyncio.AbstractEventLoop, backlog: Backlog, entering: Awaitable[bool]
    ) -> bool:
        """Run `entering` on the backlog's loop. Should this caller be cancelled meanwhile,
        the entering goes on there and a slot it takes is given back at once."""

        async def run() -> bool:
            return await entering

        taking: Future[bool] = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return await asyncio.shield(asyncio.wrap_future(taking))
        except asyncio.CancelledError:

            def give_back(done: Future[bool]) -> None:
                if not done.cancelled() and done.exception() is None and done.result():
                    with contextlib.suppress(RuntimeError):  # the loop is gone, its slots too
                        loop.call_soon_threadsafe(backlog.leave)

            taking.add_done_callback(give_back)
            raise


async def _patiently(backlog: Backlog) -> bool:
    """Enter, trying again after the hint a shed request would get, until a slot comes."""
    while not await backlog.enter():
        await asyncio.sleep(backlog.retry_hint_ms() / 1000)
    return True
