"""Presence: who is viewing a session, from open streams and heartbeats."""

from __future__ import annotations

import asyncio

from app.models import User
from app.services.presence import Presence


def _user(user_id: int, login: str) -> User:
    return User(id=user_id, login=login, name=login.title(), email=f"{login}@example.com")


ALICE, BOB = _user(1, "alice"), _user(2, "bob")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_entry_per_person_in_arrival_order_until_they_leave() -> None:
    presence = Presence()
    a1 = presence.join("s1", ALICE)
    b1 = presence.join("s1", BOB)
    a2 = presence.join("s1", ALICE)  # a second tab
    presence.join("s2", BOB)
    viewers = presence.viewers("s1")
    assert [(v.login, v.connections) for v in viewers] == [("alice", 2), ("bob", 1)]
    presence.leave("s1", a1)
    assert {(v.login, v.connections) for v in presence.viewers("s1")} == {("alice", 1), ("bob", 1)}
    presence.leave("s1", a2)
    presence.leave("s1", b1)
    presence.leave("s1", b1)  # leaving twice is harmless
    assert presence.viewers("s1") == []
    assert [v.login for v in presence.viewers("s2")] == ["bob"]


def test_heartbeats_expire_after_the_ttl() -> None:
    clock = Clock()
    presence = Presence(ttl=30, clock=clock)
    assert [v.login for v in presence.heartbeat("s1", ALICE, "tab-aaaaaaaa")] == ["alice"]
    clock.now += 20
    presence.heartbeat("s1", ALICE, "tab-aaaaaaaa")  # renewed, not doubled
    presence.heartbeat("s1", BOB, "tab-bbbbbbbb")
    assert [(v.login, v.connections) for v in presence.viewers("s1")] == [("alice", 1), ("bob", 1)]
    clock.now += 29
    assert len(presence.viewers("s1")) == 2
    clock.now += 2  # Alice's last beat is 31 s old; Bob's 31 s too
    assert presence.viewers("s1") == []
    presence.heartbeat("s1", BOB, "tab-bbbbbbbb")
    presence.leave_client("s1", BOB, "tab-bbbbbbbb")
    assert presence.viewers("s1") == []


async def test_watch_reports_joins_leaves_and_expiries() -> None:
    presence = Presence(ttl=0.3)
    seen: list[list[str]] = []

    async def watch() -> None:
        async for viewers in presence.watch("s1"):
            seen.append([v.login for v in viewers])

    task = asyncio.create_task(watch())

    async def settle(expected: list[str]) -> None:
        for _ in range(200):
            if seen and seen[-1] == expected:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"watch saw {seen}, expected last {expected}")

    await settle([])
    key = presence.join("s1", ALICE)
    await settle(["alice"])
    presence.heartbeat("s1", BOB, "tab-bbbbbbbb")
    await settle(["alice", "bob"])
    await settle(["alice"])  # Bob's heartbeat expired with no call at all
    presence.leave("s1", key)
    await settle([])
    task.cancel()
    assert seen == [[], ["alice"], ["alice", "bob"], ["alice"], []]
    await asyncio.gather(task, return_exceptions=True)
    assert presence._listeners == {}  # the watcher cleaned up after itself
