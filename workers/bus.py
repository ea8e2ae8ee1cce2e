"""The event bus: how workers hand events to the control plane that persists them.

In the embedded default the bus is `app/`'s event writer (`app/services/event_writer.py`: a
publish returns once the event is stored, so nothing sits only in memory); in distributed mode
it is one Redis stream per session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Protocol

from workers.errors import BusUnavailable
from workers.events import Event

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.typing import EncodableT, FieldT

log = logging.getLogger("nightshift.bus")


class EventPublisher(Protocol):
    async def publish(self, session_id: str, event: Event) -> None: ...

    async def aclose(self) -> None:
        """Close its connections, on the loop that used them, once nothing publishes."""
        ...


# ---------------------------------------------------------------- distributed: Redis streams
# One stream per session holds the events its runners published; the API's consumer
# (`app/services/streams.py`) persists them in order, then fans them out. A set of active
# sessions and a doorbell stream tell the consumer which streams to read.

ACTIVE_KEY = "nightshift:events:active"
"""Set of session ids whose stream may hold events not yet persisted."""
DOORBELL_KEY = "nightshift:events:new"
"""Stream of session ids, one entry per session a batch of events went to: the consumer waits
on it alone and reads the streams it names, so its work follows what is published, not how
many sessions are active."""
CURSORS_KEY = "nightshift:events:cursors"
"""Hash: session id -> id of the last stream entry the API has persisted."""
DOORBELL_MAXLEN = 10_000


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) as something that sorts in the stream's order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def stream_key(session_id: str) -> str:
    return f"nightshift:events:s:{session_id}"


class RedisStreamBus:
    """Worker side of the distributed bus: `XADD` each event to its session's stream.

    Every event carries a source id (`<publisher>:<sequence>`), stable across retries, so an
    `XADD` repeated after a lost reply is stored once by the API. Publishing waits out a Redis
    restart for up to `retry_for` seconds.

    Publishes are group-committed: the events published while one batch is on its way to
    Redis go together in the next, as one `MULTI`/`EXEC` (one round trip however many runners
    published) that also rings the doorbell once per session in it, so a session's events
    reach its stream in the order they were published and each `publish` still returns once
    its event is stored.
    """

    def __init__(self, url: str, *, retry_for: float = 60.0) -> None:
        self.url = url
        self.retry_for = retry_for
        self.publisher = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = itertools.count(1)
        self._client: aioredis.Redis | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches sent so far."""

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
            )
        return self._client

    async def publish(self, session_id: str, event: Event) -> None:
        fields: dict[FieldT, EncodableT] = {
            "src": f"{self.publisher}:{next(self._seq)}",
            "data": event.model_dump_json(),
        }
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        self._pending.append((session_id, fields, stored))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        await stored

    async def _flush(self) -> None:
        """Send what is pending, batch after batch, until nothing is."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._send(batch)
            except Exception as exc:  # every publisher of the batch hears it
                _settle(batch, exc)
            except BaseException:  # cancelled with the loop: nobody is left waiting
                batch, self._pending = batch + self._pending, []
                _settle(batch, BusUnavailable("publishing was cancelled"))
                raise
            else:
                _settle(batch, None)

    async def _send(self, batch: list[_Pending]) -> None:
        from redis.exceptions import ConnectionError, TimeoutError

        sessions = list(dict.fromkeys(session_id for session_id, _, _ in batch))
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                async with self._redis().pipeline(transaction=True) as pipe:
                    for session_id, fields, _ in batch:
                        pipe.xadd(stream_key(session_id), fields)
                    pipe.sadd(ACTIVE_KEY, *sessions)
                    for session_id in sessions:  # the API reads the streams it names
                        pipe.xadd(
                            DOORBELL_KEY,
                            {"sid": session_id},
                            maxlen=DOORBELL_MAXLEN,
                            approximate=True,
                        )
                    await pipe.execute()
                break
            except (ConnectionError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise BusUnavailable(
                        f"Redis at the broker URL did not take an event for {self.retry_for:.0f}s: {exc}"
                    ) from exc
                log.warning("publishing to Redis failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.batches += 1

    async def aclose(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_Pending = tuple[str, "dict[FieldT, EncodableT]", "asyncio.Future[None]"]
"""(session id, stream entry, settled once it is stored)"""


def _settle(batch: list[_Pending], error: Exception | None) -> None:
    for _, _, stored in batch:
        if stored.done():  # its publisher was cancelled; the event went (or goes) all the same
            continue
        if error is None:
            stored.set_result(None)
        else:
            stored.set_exception(error)
