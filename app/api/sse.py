"""Server-sent events: the one generator behind every `text/event-stream` response.

A stream holds one of its caller's stream slots (NIGHTSHIFT_MAX_STREAMS_PER_USER) until it
ends, also when the response is dropped before its body ever runs. Items from the source are
queued (so a slow client cannot stall the hub), sent in bursts (everything queued since the
last send), and a comment keeps idle connections open through proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from fastapi.responses import StreamingResponse

from app.services.stream_slots import StreamSlot

T = TypeVar("T")
KEEPALIVE_S = 15.0
QUEUE_MAX = 1000


def frame(data: str, event: str | None = None, id_: int | None = None) -> str:
    """One server-sent event."""
    head = (f"id: {id_}\n" if id_ is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {data}\n\n"


def event_stream(
    source: AsyncGenerator[T, None],
    frames: Callable[[list[T]], AsyncIterator[str]],
    slot: StreamSlot,
) -> StreamingResponse:
    """A `text/event-stream` response of `source`: each burst of items becomes the frames
    `frames` makes of it. `source` is closed and `slot` released when the stream ends."""

    async def body() -> AsyncIterator[str]:
        queue: asyncio.Queue[T] = asyncio.Queue(maxsize=QUEUE_MAX)

        async def pump() -> None:
            async for item in source:
                await queue.put(item)

        task = asyncio.create_task(pump())
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    first = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                burst = [first]
                while not queue.empty():
                    burst.append(queue.get_nowait())
                async for text in frames(burst):
                    yield text
        finally:
            slot.release()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await source.aclose()

    stream = body()
    weakref.finalize(stream, slot.release)  # also when the response never starts its body
    return StreamingResponse(
        stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
