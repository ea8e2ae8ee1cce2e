"""The distributed event bus against the local Redis: a worker-side publisher, the API-side
consumer, and the session file as the single writer (no duplicates, nothing lost, in order)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from app.services.streams import StreamConsumer
from tests.factories import make_person, make_repo, wait_for
from workers.bus import ACTIVE_KEY, CURSORS_KEY, DOORBELL_KEY, RedisStreamBus, stream_key
from workers.events import Notice, TextDelta

pytestmark = pytest.mark.redis
OURS = 99
"""The prompt id on the events these tests publish, as a worker would."""


@pytest.fixture
def session_id(runtime: Any, tmp_path: Path) -> str:
    from app.schemas import RepoCreate

    person = make_person(runtime, "sam", "Sam Stream", "sam@example.com")
    runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "streams"))))
    return str(runtime.sessions.create(person.user, "streams", "stream things").id)


def _publish(
    url: str, session_id: str, texts: list[str], bus: RedisStreamBus | None = None
) -> None:
    async def go() -> None:
        publisher = bus or RedisStreamBus(url)
        for text in texts:
            await publisher.publish(session_id, TextDelta(text=text, prompt_id=OURS))
        if bus is None:
            await publisher.aclose()

    asyncio.run(go())


def _texts(runtime: Any, session_id: str) -> list[str]:
    """What this test published (the session's own in-process runner may add its events).

    Read once every stored event's index values are written: the session's list stops before
    the first that is not, and the runner's own events are indexed by another thread."""
    wait_for(
        lambda: runtime.hub.listed_until(session_id) is None, 10, "the session's list to catch up"
    )
    return [
        e.text
        for e in runtime.sessions.events(session_id)
        if e.type == "text_delta" and e.prompt_id == OURS
    ]


def test_consumer_persists_every_stream_in_order_and_fans_out(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    received: list[Any] = []
    runtime.hub.handlers.append(
        lambda sid, event: received.append((sid, event.type, event.prompt_id))
    )
    consumer = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    consumer.start()
    try:
        _publish(redis_url, session_id, [f"chunk {n}" for n in range(50)])
        wait_for(lambda: len(_texts(runtime, session_id)) == 50, 10, "50 events persisted")
    finally:
        consumer.stop()
    assert _texts(runtime, session_id) == [f"chunk {n}" for n in range(50)]
    ids = [e.id for e in runtime.sessions.events(session_id)]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert received.count((session_id, "text_delta", OURS)) == 50
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert session_id in client.smembers(ACTIVE_KEY)
    assert client.hget(CURSORS_KEY, session_id) == consumer.cursors[session_id]


def test_restarted_consumer_resumes_without_duplicates(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    first = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    first.start()
    _publish(redis_url, session_id, ["a", "b", "c"])
    wait_for(lambda: len(_texts(runtime, session_id)) == 3, 10, "the first three")
    first.stop()
    # Events published while no consumer runs wait in Redis.
    _publish(redis_url, session_id, ["d", "e"])
    # The crash came between persisting and saving the cursor: the next consumer rereads all.
    redis.Redis.from_url(redis_url).hdel(CURSORS_KEY, session_id)
    second = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    second.start()
    try:
        wait_for(lambda: len(_texts(runtime, session_id)) == 5, 10, "all five")
        _publish(redis_url, session_id, ["f"])
        wait_for(lambda: len(_texts(runtime, session_id)) == 6, 10, "the sixth")
    finally:
        second.stop()
    assert _texts(runtime, session_id) == ["a", "b", "c", "d", "e", "f"]


def test_a_repeated_xadd_is_stored_once(runtime: Any, session_id: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    event = TextDelta(text="twice", prompt_id=OURS).model_dump_json()
    for _ in range(2):  # what a publisher's retry after a lost reply looks like
        client.xadd(stream_key(session_id), {"src": "runner-x:7", "data": event})
    client.sadd(ACTIVE_KEY, session_id)
    consumer = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    assert consumer.drain(session_id) == 2
    assert _texts(runtime, session_id) == ["twice"]


def test_drain_persists_synchronously_before_the_control_plane_answers(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    consumer = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    runtime.runners.sync_events = consumer.drain
    _publish(redis_url, session_id, ["before the answer"])
    # No consumer thread runs: the control plane's own call persists what is pending.
    runtime.runners.context(session_id)
    assert _texts(runtime, session_id) == ["before the answer"]
    assert consumer.drain(session_id) == 0


def test_malformed_and_foreign_entries_do_not_block_the_stream(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream_key(session_id), {"src": "x:1", "data": '{"type": "nonsense"}'})
    client.xadd(
        stream_key("nosuchsession"), {"src": "x:2", "data": Notice(message="?").model_dump_json()}
    )
    client.sadd(ACTIVE_KEY, session_id, "nosuchsession")
    consumer = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200)
    consumer.start()
    try:
        _publish(redis_url, session_id, ["after the bad one"])
        wait_for(lambda: _texts(runtime, session_id) == ["after the bad one"], 10, "the good one")
        wait_for(lambda: consumer.cursors.get("nosuchsession", "0-0") != "0-0", 10, "skipping")
    finally:
        consumer.stop()


def test_quiet_persisted_streams_are_trimmed_and_forgotten(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    consumer = StreamConsumer(
        redis_url, runtime.hub.publish, block_ms=100, forget_after_s=0.3, trim_every=5
    )
    consumer.start()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        _publish(redis_url, session_id, [str(n) for n in range(12)])
        wait_for(lambda: len(_texts(runtime, session_id)) == 12, 10, "twelve events")
        wait_for(lambda: client.xlen(stream_key(session_id)) < 12, 10, "a trim")
        consumer._last_maintain = 0  # run upkeep now rather than in five seconds
        wait_for(lambda: not client.exists(stream_key(session_id)), 10, "the stream deleted")
        assert session_id not in client.smembers(ACTIVE_KEY)
        assert client.hget(CURSORS_KEY, session_id) is None
        # A runner publishing later brings the stream back, from the start.
        _publish(redis_url, session_id, ["later"])
        wait_for(lambda: _texts(runtime, session_id)[-1:] == ["later"], 10, "the late event")
    finally:
        consumer.stop()
    assert len(_texts(runtime, session_id)) == 13
    assert client.xlen(DOORBELL_KEY) >= 1


def test_publishes_that_come_together_go_to_redis_together_in_order(redis_url: str) -> None:
    """Runners publishing at once share a round trip to Redis (group commit); each session's
    events reach its stream in the order they were published, each once."""
    bus = RedisStreamBus(redis_url)
    sessions = [f"s{n}" for n in range(20)]

    async def go() -> None:
        async def runner(session_id: str) -> None:
            for n in range(5):
                await bus.publish(session_id, TextDelta(text=f"{session_id} {n}"))

        await asyncio.gather(*(runner(s) for s in sessions))
        await bus.aclose()

    asyncio.run(go())
    assert bus.batches <= 10  # 100 events from 20 runners
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for session_id in sessions:
        entries = client.xrange(stream_key(session_id))
        texts = [TextDelta.model_validate_json(fields["data"]).text for _, fields in entries]
        assert texts == [f"{session_id} {n}" for n in range(5)]
    assert client.smembers(ACTIVE_KEY) == set(sessions)
    assert {fields["sid"] for _, fields in client.xrange(DOORBELL_KEY)} == set(sessions)


def test_publisher_rides_out_a_short_redis_outage(tmp_path: Path) -> None:
    from tests.cluster import RedisServer

    server = RedisServer(tmp_path).start()
    try:
        bus = RedisStreamBus(server.url(), retry_for=20)

        async def go() -> None:
            await bus.publish("s1", TextDelta(text="one"))
            server.stop(keep_data=True)
            restart = asyncio.get_running_loop().run_in_executor(None, server.start)
            await bus.publish("s1", TextDelta(text="two"))  # retried until Redis is back
            await restart
            await bus.aclose()

        asyncio.run(go())
        entries = redis.Redis.from_url(server.url(), decode_responses=True).xrange(stream_key("s1"))
        sources = [fields["src"] for _, fields in entries]
        assert len(entries) == 2 and len(set(sources)) == 2
    finally:
        server.stop(keep_data=False)


def test_draining_with_redis_down_is_unavailable_not_a_crash() -> None:
    """A reader asking for a session's events while Redis is down gets `Unavailable` (a 503),
    not redis-py's own error."""
    import socket

    from app.errors import Unavailable

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    published: list[object] = []
    consumer = StreamConsumer(f"redis://127.0.0.1:{port}/0", lambda *a: published.append(a))
    try:
        with pytest.raises(Unavailable, match=r"the event bus \(Redis\) is unavailable"):
            consumer.drain_or_unavailable("s-1")
    finally:
        consumer.stop()
    assert published == []


def test_a_failed_entry_is_read_again_and_stored_in_order(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    """Reading runs ahead of persisting: when an entry fails to persist, what was read after
    it is dropped and read again from that entry, so nothing is lost, doubled or reordered.
    The failure waits until the read has queued a full batch behind it (the session is held
    out of the reads): dropping that batch must also let the session be read again."""
    failures = []

    def flaky(sid: str, event: Any, source: str) -> object:
        if getattr(event, "text", None) == "c" and not failures:
            failures.append(source)
            wait_for(lambda: sid in consumer._held, 5, "the next batch read behind the failure")
            raise RuntimeError("the disk hiccuped")
        return runtime.hub.publish(sid, event, source)

    consumer = StreamConsumer(redis_url, flaky, block_ms=200, batch=2)
    consumer.start()
    try:
        _publish(redis_url, session_id, list("abcdefg"))
        wait_for(lambda: len(_texts(runtime, session_id)) == 7, 15, "all seven")
    finally:
        consumer.stop()
    assert failures and _texts(runtime, session_id) == list("abcdefg")


def test_a_slow_session_holds_up_neither_the_others_nor_its_own_order(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    """One session's write waits; another session's events are persisted meanwhile. The slow
    one's queue fills (it is left out of the reads), and once the write goes on, every event
    lands in order."""
    import threading

    person = make_person(runtime, "quinn", "Quinn Quick", "quinn@example.com")
    other = str(runtime.sessions.create(person.user, "streams", "quick one").id)
    gate = threading.Event()

    def slow_for_one(sid: str, event: Any, source: str) -> object:
        if sid == session_id:
            gate.wait(20)
        return runtime.hub.publish(sid, event, source)

    consumer = StreamConsumer(redis_url, slow_for_one, block_ms=200, batch=4)
    consumer.start()
    try:
        _publish(redis_url, session_id, [f"slow {n}" for n in range(20)])
        _publish(redis_url, other, [f"quick {n}" for n in range(20)])
        wait_for(lambda: len(_texts(runtime, other)) == 20, 15, "the quick session")
        assert _texts(runtime, session_id) == []
        gate.set()
        wait_for(lambda: len(_texts(runtime, session_id)) == 20, 15, "the slow session")
    finally:
        gate.set()
        consumer.stop()
    assert _texts(runtime, session_id) == [f"slow {n}" for n in range(20)]
    assert _texts(runtime, other) == [f"quick {n}" for n in range(20)]


def test_a_sessions_batch_is_indexed_in_one_write_and_watchers_see_it_after(
    make_settings: Any, tmp_path: Path, redis_url: str
) -> None:
    """Distributed runners' status and usage events reach the index as one transaction per
    session batch (not one wait on the control DB per event), and the changes feed's watchers
    get them only once that write is done."""
    import threading

    from app.runtime import build_runtime
    from app.schemas import RepoCreate
    from app.services.event_writer import StagedPublishes
    from workers.events import StatusChanged, UsageReported

    runtime = build_runtime(make_settings())
    runtime.sessions.dispatcher = None  # no runner here: the stream is the worker's
    try:
        person = make_person(runtime, "sam", "Sam Stream", "sam@example.com")
        runtime.repos.add(RepoCreate(url=str(make_repo(tmp_path, "streams"))))
        session_id = runtime.sessions.create(person.user, "streams", "stream things").id
        staged = StagedPublishes(runtime.hub, runtime.sessions.index)
        consumer = StreamConsumer(redis_url, staged.publish, block_ms=200, staging=staged.batch)
        seen: list[str] = []

        async def publish() -> None:
            bus = RedisStreamBus(redis_url)
            for status in ("starting", "running"):
                await bus.publish(session_id, StatusChanged(status=status, prompt_id=OURS))
            for _ in range(3):
                usage = UsageReported(
                    input_tokens=10, output_tokens=2, cached_tokens=0, prompt_id=OURS
                )
                await bus.publish(session_id, usage)
            await bus.publish(session_id, StatusChanged(status="idle", prompt_id=OURS))
            await bus.aclose()

        subscribed = threading.Event()

        def watcher() -> None:
            async def watch() -> None:
                events = runtime.hub.watch(types=frozenset({"status"}))
                waiting = asyncio.ensure_future(events.__anext__())
                await asyncio.sleep(0)
                subscribed.set()
                while True:
                    sid, event = await waiting
                    if sid == session_id and isinstance(event, StatusChanged):
                        seen.append(f"{event.status}:{runtime.sessions.get(session_id).status}")
                        if event.status == "idle":
                            await events.aclose()
                            return
                    waiting = asyncio.ensure_future(events.__anext__())

            asyncio.run(asyncio.wait_for(watch(), 30))

        watching = threading.Thread(target=watcher)
        watching.start()
        assert subscribed.wait(10)
        asyncio.run(publish())
        before = runtime.sessions.index.batches
        assert consumer.drain(session_id) == 6
        watching.join(30)
        # Six indexed events of one session, read in one batch: one index transaction.
        assert runtime.sessions.index.batches - before == 1
        row = runtime.sessions.get(session_id)
        assert row.status == "idle" and row.input_tokens == 30
        # Every watcher saw the index as the batch left it, never behind an event.
        assert seen == ["starting:idle", "running:idle", "idle:idle"]
        consumer.stop()
    finally:
        runtime.close()


def test_a_read_names_the_streams_the_doorbell_rang_not_every_active_one(
    runtime: Any, session_id: str, redis_url: str
) -> None:
    """Every batch a worker publishes rings the doorbell for its sessions, and the consumer
    reads those streams only: with many sessions active, a read costs what was published.
    Every stream is read on start and then every `refresh_s` (a minute here), for an entry no
    ring announced (a worker from before rings were per batch)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    idle = [f"idle{n:03d}" for n in range(200)]
    client.sadd(ACTIVE_KEY, *idle)  # active sessions with nothing new
    event = TextDelta(text="unannounced", prompt_id=OURS).model_dump_json()
    client.xadd(stream_key(session_id), {"src": "old-worker:1", "data": event})
    client.sadd(ACTIVE_KEY, session_id)
    consumer = StreamConsumer(redis_url, runtime.hub.publish, block_ms=200, refresh_s=60)
    reads: list[str] = []
    watching = threading.Event()

    def watch() -> None:  # Redis's MONITOR: every command the server runs, as it runs it
        with client.monitor() as monitor:
            watching.set()
            for command in monitor.listen():
                if command["command"].startswith("XREAD "):
                    reads.append(command["command"])
                if "stop-watching" in command["command"]:
                    return

    consumer.start()
    try:
        wait_for(lambda: _texts(runtime, session_id) == ["unannounced"], 10, "the first sweep")
        threading.Thread(target=watch, daemon=True).start()
        assert watching.wait(10)
        for n in range(3):  # three batches, one at a time: each rings, each is read
            _publish(redis_url, session_id, [f"batch {n}"])
            wait_for(lambda n=n: len(_texts(runtime, session_id)) == n + 2, 10, f"batch {n}")
        client.get("stop-watching")
    finally:
        consumer.stop()
    assert _texts(runtime, session_id) == ["unannounced", "batch 0", "batch 1", "batch 2"]
    assert any(stream_key(session_id) in read for read in reads)
    assert not [read for read in reads if stream_key("idle") in read]
