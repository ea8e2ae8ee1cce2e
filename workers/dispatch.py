"""Dispatch: how the control plane asks for a session to be run or stopped."""

from __future__ import annotations

import contextlib
import logging
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
    """

    def __init__(self, broker_url: str, visibility_timeout: float) -> None:
        self.celery = celery_client(CeleryConfig(broker_url, visibility_timeout))
        self.redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=3)

    def run_session(self, session_id: str) -> None:
        key = dispatch_key(session_id)
        try:
            # An idle runner of this session, wherever it runs, takes the prompt at once; and
            # the marker, in the same round trip.
            pipe = self.redis.pipeline(transaction=False)
            pipe.publish(RUNNERS_CHANNEL, nudge_message("wake", session_id))
            pipe.set(key, str(time.time()), nx=True, ex=DISPATCH_MARK_TTL_S)
            if not pipe.execute()[1]:
                return  # a run_session for this session is queued and will drain every prompt
            try:
                send_run_session(self.celery, session_id)
            except BaseException:
                self.redis.delete(key)
                raise
        except Exception as exc:
            # The prompt is stored; the reaper dispatches again once the broker is back.
            log.warning("could not dispatch session %s (%s); will retry", session_id, exc)

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
        self.redis.close()
        with contextlib.suppress(Exception):
            self.celery.close()
