"""The wire between the control plane and Celery workers: what travels over Redis, and how.

Both ends import this module and not each other: the API (`workers/dispatch.py`) and beat
send, the worker process (`workers/celery_app.py`) receives.

- Tasks, by name, on two queues: `nightshift.run_session(session_id)` on
  `nightshift.sessions`; every scheduled job `nightshift.<job>(*args, **kwargs)` (for example
  `build_image(repo, force=, trigger=)`) on `nightshift.jobs`. Payloads are JSON and carry ids
  and names only: the receiving worker reads everything else from the control plane.
- A dispatch marker `nightshift:dispatch:<session>` (a plain key with a TTL) is set while a
  `run_session` task of the session waits in the queue, so re-dispatching does not pile up
  copies; the worker deletes it when it takes the task.
- Nudges on the pub/sub channel `nightshift:runners`, which every worker listens on:
  `stop <session>` and `wake <session>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from workers.scheduled import Scheduled

if TYPE_CHECKING:
    from celery import Celery

RUN_SESSION = "nightshift.run_session"
SESSIONS_QUEUE = "nightshift.sessions"
JOBS_QUEUE = "nightshift.jobs"
DISPATCH_MARK_TTL_S = 900
RUNNERS_CHANNEL = "nightshift:runners"
"""Pub/sub channel every worker listens on: `stop <session>` and `wake <session>` nudges."""

Nudge = Literal["stop", "wake"]


def task_name(job: str) -> str:
    """The Celery task that runs the scheduled job `job` (`workers/scheduled.py`)."""
    return f"nightshift.{job}"


def dispatch_key(session_id: str) -> str:
    """Set while a `run_session` task for the session waits in the queue (see CeleryDispatcher)."""
    return f"nightshift:dispatch:{session_id}"


def nudge_message(verb: Nudge, session_id: str) -> str:
    return f"{verb} {session_id}"


def parse_nudge(message: str) -> tuple[Nudge, str] | None:
    """A nudge's verb and session; None for a message this version does not know."""
    verb, _, session_id = message.partition(" ")
    if verb == "stop":
        return "stop", session_id
    if verb == "wake":
        return "wake", session_id
    return None


@dataclass(frozen=True)
class CeleryConfig:
    broker_url: str
    visibility_timeout: float
    schedule: list[Scheduled] = field(default_factory=list)


def celery_client(config: CeleryConfig) -> Celery:
    """The Celery app with the wire's configuration and no task bodies: what the API and beat
    send with. Workers add the bodies (`workers.celery_app.make_celery`)."""
    # Imported here: Celery takes a fifth of a second to load, and the embedded default,
    # which never sends a task, imports this module through the dispatcher.
    from celery import Celery

    app = Celery("nightshift", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": int(config.visibility_timeout),
            "socket_keepalive": True,
            "health_check_interval": 30,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Keep running sessions going through a Redis restart: their lease, not the broker
        # connection, says whether they may run.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=JOBS_QUEUE,
        task_routes={RUN_SESSION: {"queue": SESSIONS_QUEUE}},
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.3},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
        beat_schedule={
            f"{s.job} every {s.interval_s:g}s": {
                "task": task_name(s.job),
                "schedule": timedelta(seconds=s.interval_s),
                # A run that waited a whole interval in the queue is superseded by the next.
                "options": {"expires": s.interval_s},
            }
            for s in config.schedule
        },
    )
    return app


def send_run_session(celery: Celery, session_id: str, producer: Any = None) -> None:
    """Queue `run_session` (through `producer`, a kombu producer, when one is held)."""
    celery.send_task(RUN_SESSION, args=[session_id], producer=producer)


def send_job(celery: Celery, job: str, *args: object, **kwargs: object) -> None:
    celery.send_task(task_name(job), args=list(args), kwargs=kwargs)
