"""Dispatch: how the control plane asks for a session to be run or stopped."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from workers.executor import InProcessExecutor
from workers.live_runners import Runners
from workers.runner import WorkerDeps
from workers.wire import (
    DISPATCH_MARK_TTL_S,
    RUNNERS_CHANNEL,
    CeleryConfig,
    celery_client,
    dispatch_key,
    nudge_message,
    send_job,
    send_run_session,
)

log = logging.getLogger("nightshift.dispatch")


class Dispatcher(Protocol):
    def run_session(self, session_id: str) -> None:
        """Make sure a runner drains this session's queue (idempotent)."""
        ...

    def stop_session(self, session_id: str) -> None:
        """Cancel the model stream and running command of this session's runner, if any."""
        ...


class InProcessDispatcher:
    """Runs sessions on the in-process executor; stop reaches the runner directly."""

    def __init__(self, executor: InProcessExecutor, deps: Callable[[], WorkerDeps]) -> None:
        """`deps` returns what runners use; it is called per run, because the control plane
        in there creates and dispatches sessions through this dispatcher (a cycle)."""
        self.executor = executor
        self.deps = deps
        self.runners = Runners()

    def run_session(self, session_id: str) -> None:
        if self.runners.active(session_id):
            # The live runner checks the queue before it lets go of the lease; if it is idle,
            # waiting for a follow-up, this wakes it now.
            self.executor.call(lambda: self.runners.wake(session_id))
            return
        self.executor.submit(lambda: self.runners.run(session_id, self.deps()))

    def stop_session(self, session_id: str) -> None:
        self.executor.call(lambda: self.runners.stop(session_id))


class CeleryDispatcher:
    """Sends `run_session` to Celery workers on Redis (distributed mode).

    At most one `run_session` per session waits in the queue: a marker key is set with the
    task and cleared by the worker when it starts the task, so the reaper's periodic re-dispatch
    of a queued session does not pile up copies behind busy workers. The marker lives in the
    same Redis as the queue, so a Redis that lost its queue lost the markers too, and the
    reaper dispatches again. Stop is nudged over pub/sub; the lease heartbeat says "stop" as
    well, within seconds, should the nudge be missed.

    `run_session` returns at once: one thread sends what was asked, in batches (one Redis round
    trip for every session's wake-up and marker, then the tasks through one producer), so a
    creation's answer never waits for Redis and a burst of them costs a few round trips. The
    prompt is stored before it is asked for; should the process end before the send, or Redis
    refuse it, the reaper dispatches the session again (at start-up, then every
    `reap_interval`).
    """

    MAX_BATCH = 256

    def __init__(self, broker_url: str, visibility_timeout: float) -> None:
        self.celery = celery_client(CeleryConfig(broker_url, visibility_timeout))
        self.redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=3)
        self._asked: queue.SimpleQueue[str | threading.Event | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches = 0
        """Batches sent so far (for tests)."""

    def run_session(self, session_id: str) -> None:
        self._ask(session_id)

    def _ask(self, item: str | threading.Event | None) -> None:
        self._asked.put(item)
        if self._sender is None:
            with self._start_lock:
                if self._sender is None:
                    self._sender = threading.Thread(
                        target=self._send_loop, name="nightshift-dispatch", daemon=True
                    )
                    self._sender.start()

    def _send_loop(self) -> None:
        """Take what was asked (a session id; an Event to set once everything before it is
        sent; None to stop), in order, sending the sessions in batches."""
        while True:
            items = [self._asked.get()]
            while len(items) < self.MAX_BATCH:
                try:
                    items.append(self._asked.get_nowait())
                except queue.Empty:
                    break
            batch: list[str] = []
            for item in items:
                if isinstance(item, str):
                    batch.append(item)
                    continue
                if batch:
                    self._send(batch)
                    batch = []
                if item is None:
                    return
                item.set()
            if batch:
                self._send(batch)

    def _send(self, asked: list[str]) -> None:
        session_ids = list(dict.fromkeys(asked))  # a session asked twice is sent once
        keys = [dispatch_key(session_id) for session_id in session_ids]
        try:
            # An idle runner of a session, wherever it runs, takes the prompt at once; and the
            # markers, in the same round trip.
            pipe = self.redis.pipeline(transaction=False)
            for session_id, key in zip(session_ids, keys, strict=True):
                pipe.publish(RUNNERS_CHANNEL, nudge_message("wake", session_id))
                pipe.set(key, str(time.time()), nx=True, ex=DISPATCH_MARK_TTL_S)
            marked = pipe.execute()[1::2]
        except Exception as exc:
            log.warning(
                "could not dispatch %d session(s) (%s); the reaper will retry",
                len(session_ids),
                exc,
            )
            return
        # A session already marked has a run_session queued that will drain every prompt.
        pairs = list(zip(session_ids, keys, strict=True))
        due = [pair for pair, fresh in zip(pairs, marked, strict=True) if fresh]
        sent = 0
        try:
            with self.celery.producer_or_acquire() as producer:
                for session_id, _ in due:
                    send_run_session(self.celery, session_id, producer)
                    sent += 1
        except Exception as exc:
            unsent = due[sent:]
            # The prompts are stored; the reaper dispatches them again once the broker is back.
            log.warning(
                "could not dispatch %d session(s) (%s); the reaper will retry", len(unsent), exc
            )
            with contextlib.suppress(Exception):
                self.redis.delete(*(key for _, key in unsent))
        self.batches += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything asked so far is sent (or was refused); False on timeout."""
        if self._sender is None:
            return True
        sent = threading.Event()
        self._ask(sent)
        return sent.wait(timeout)

    def enqueue_job(self, job: str, *args: object, **kwargs: object) -> None:
        """Hand a job (e.g. `build_image <repo>`) to a worker now."""
        try:
            send_job(self.celery, job, *args, **kwargs)
        except Exception as exc:
            log.warning("could not queue %s %s (%s); the schedule runs it later", job, args, exc)

    def stop_session(self, session_id: str) -> None:
        try:
            self.redis.publish(RUNNERS_CHANNEL, nudge_message("stop", session_id))
        except Exception as exc:
            log.warning(
                "stop nudge for %s not sent (%s); the lease heartbeat carries it", session_id, exc
            )

    def close(self) -> None:
        sender = self._sender
        if sender is not None:  # send what was asked, then stop
            self._asked.put(None)
            sender.join(10)
            self._sender = None
        self.redis.close()
        with contextlib.suppress(Exception):
            self.celery.close()
