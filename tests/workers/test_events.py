"""Events as workers publish them."""

from __future__ import annotations

import asyncio

from workers.events import Event, Notice, StatusChanged, for_prompt


def test_for_prompt_stamps_each_event_with_its_prompt_and_attempt() -> None:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    original = Notice(message="hello")

    async def go() -> None:
        emit = for_prompt(publish, 42, 3)
        await emit(original)
        await emit(StatusChanged(status="running"))

    asyncio.run(go())
    assert [(e.type, e.prompt_id, e.attempt) for e in published] == [
        ("notice", 42, 3),
        ("status", 42, 3),
    ]
    assert published[0].ts == original.ts
    assert (original.prompt_id, original.attempt) == (None, 1)  # the caller's event is untouched
