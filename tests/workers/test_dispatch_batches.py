"""Distributed dispatch off the request's path (`workers/dispatch.py`): `run_session` returns at
once, a burst is sent in a few batches, every session gets exactly one task, and a broker that
refuses leaves the sessions to the reaper without failing anyone's request."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import redis

from workers.dispatch import CeleryDispatcher
from workers.wire import SESSIONS_QUEUE, dispatch_key


def _queued_sessions(broker: redis.Redis) -> list[str]:
    out = []
    for raw in broker.lrange(SESSIONS_QUEUE, 0, -1):
        body = json.loads(raw)
        out.append(body["headers"]["argsrepr"].strip("[]'\""))
    return out


def test_a_burst_is_sent_in_batches_one_task_per_session(redis_url: str) -> None:
    broker = redis.Redis.from_url(redis_url)
    dispatcher = CeleryDispatcher(redis_url, 3600)
    try:
        ids = [f"{i:012x}" for i in range(300)]
        threads = [
            threading.Thread(
                target=lambda chunk=ids[i::6]: [dispatcher.run_session(s) for s in chunk]
            )
            for i in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        for session_id in ids[:50]:  # asked again while queued: held back by the marker
            dispatcher.run_session(session_id)
        assert dispatcher.flush(10)
        assert sorted(_queued_sessions(broker)) == sorted(ids)
        assert all(broker.exists(dispatch_key(s)) for s in ids)
        assert 1 <= dispatcher.batches < 100  # hundreds of sessions, a few round trips
    finally:
        dispatcher.close()


def test_a_refusing_broker_leaves_the_sessions_to_the_reaper(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = CeleryDispatcher("redis://127.0.0.1:9/0", 3600)  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING, logger="nightshift.dispatch"):
            dispatcher.run_session("0123456789ab")  # returns at once, raises nothing
            assert dispatcher.flush(30)
        assert "the reaper will retry" in caplog.text
    finally:
        dispatcher.close()


def test_close_sends_what_was_asked(redis_url: str) -> None:
    broker = redis.Redis.from_url(redis_url)
    dispatcher = CeleryDispatcher(redis_url, 3600)
    for i in range(20):
        dispatcher.run_session(f"c{i:011x}")
    dispatcher.close()
    assert len(_queued_sessions(broker)) == 20
