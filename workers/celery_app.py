"""Celery on Redis: the distributed dispatcher's workers.

Tasks are thin and take ids (their names, queues and payloads are the wire's,
`workers/wire.py`); their bodies call the same functions the embedded default runs
(`workers.runner.run_session`, `workers.scheduled.*`) on the worker process's own event loop.

Crash safety, layer by layer:
- a task is acknowledged only after it ran (`task_acks_late`), and is handed back when the
  process running it dies (`task_reject_on_worker_lost`); a worker reserves one task per free
  slot (`worker_prefetch_multiplier=1`);
- Redis redelivers an unacknowledged task only after `visibility_timeout`, set above the
  longest run, so a slow session is never run twice by redelivery;
- the session lease (heartbeat every few seconds, held in the control DB) is what makes a run
  exclusive: a duplicate delivery finds the lease held, or the queue empty, and returns;
- when a worker dies, the API's reaper sees the lease lapse (at once when the worker was on the
  API's host and its process is gone), requeues the interrupted prompt and dispatches again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
from celery import Celery, signals

from images.image_jobs import ImageJobs
from images.pool import WarmPool
from workers.executor import InProcessExecutor, every
from workers.live_runners import Runners
from workers.runner import WorkerDeps
from workers.scheduled import JobContext, run_job
from workers.tuning import settle_heap
from workers.wire import (
    RUN_SESSION,
    RUNNERS_CHANNEL,
    CeleryConfig,
    celery_client,
    dispatch_key,
    parse_nudge,
    send_job,
    task_name,
)

log = logging.getLogger("nightshift.celery")
T = TypeVar("T")


def make_celery(config: CeleryConfig) -> Celery:
    """The Celery app of a worker process: the wire's configuration (`workers/wire.py`) with
    the task bodies registered."""
    app = celery_client(config)
    _register_tasks(app)
    return app


# ---------------------------------------------------------------- one worker process


class WorkerContext:
    """What one worker process holds: its event loop, runners, dependencies and Redis."""

    def __init__(
        self,
        deps: WorkerDeps,
        image_jobs: ImageJobs,
        pool: WarmPool,
        executor: InProcessExecutor,
        redis_url: str,
        celery: Celery,
        *,
        pool_interval: float = 15.0,
        housekeeping: list[tuple[str, float, Callable[[], object]]] | None = None,
        on_close: list[Callable[[], object]] | None = None,
    ) -> None:
        self.deps = deps
        self.image_jobs = image_jobs
        self.pool = pool
        self.executor = executor
        self.runners = Runners()
        self.redis_url = redis_url
        self.celery = celery
        self.pool_interval = pool_interval
        self.housekeeping = housekeeping or []
        """(name, interval, blocking job) run periodically in a thread, e.g. snapshot GC."""
        self.on_close = on_close or []
        self._redis: aioredis.Redis | None = None
        self._jobs: JobContext | None = None
        self._background: list[Any] = []
        self.listening = threading.Event()

    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=5, health_check_interval=30
            )
        return self._redis

    def jobs(self) -> JobContext:
        if self._jobs is None:

            async def fan_out(job: str, arg: str) -> None:
                await asyncio.to_thread(send_job, self.celery, job, arg)

            self._jobs = JobContext(
                control=self.deps.control, image_jobs=self.image_jobs, fan_out=fan_out
            )
        return self._jobs

    def start(self) -> None:
        self.executor.start()
        if not self._background:
            self._background.append(self.executor.submit(self._listen_for_nudges))
            # Pooled sandboxes belong to this process: it keeps its own pool topped up.
            self._background.append(
                self.executor.submit(
                    lambda: every(
                        self.pool_interval,
                        lambda: run_job(self.jobs(), "maintain_pool"),
                        "warm pool",
                    )
                )
            )
            for name, interval, job in self.housekeeping:
                self._background.append(
                    self.executor.submit(
                        functools.partial(
                            every, interval, functools.partial(asyncio.to_thread, job), name
                        )
                    )
                )

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on this process's loop and wait for it (from a Celery pool thread)."""
        self.start()
        return self.executor.submit(factory).result()

    def run_session(self, session_id: str) -> None:
        async def job() -> None:
            with contextlib.suppress(aioredis.RedisError):
                await self.redis().delete(dispatch_key(session_id))
            log.info("session %s: draining its queue", session_id)
            await self.runners.run(session_id, self.deps)

        try:
            self.call(job)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            # This worker is shutting down and gave the session back; the API's reaper
            # dispatches it again, so this delivery is done.
            log.info("session %s handed back on shutdown", session_id)

    def run_job(self, name: str, *args: Any, **kwargs: Any) -> str:
        return self.call(lambda: run_job(self.jobs(), name, *args, **kwargs))

    async def _listen_for_nudges(self) -> None:
        delay = 0.2
        while True:
            pubsub = self.redis().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(RUNNERS_CHANNEL)
                self.listening.set()
                delay = 0.2
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        self._nudged(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("stop channel: %s; resubscribing in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _abandon(self) -> None:
        handed = self.runners.abandon_all()
        if handed:
            log.info("shutting down: handing %d session(s) back", handed)
        deadline = asyncio.get_running_loop().time() + 15
        while self.runners.all() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    def _nudged(self, message: str) -> None:
        nudge = parse_nudge(message)
        if nudge is None:
            return
        verb, session_id = nudge
        if verb == "stop" and self.runners.stop(session_id):
            log.info("stop requested for %s: stopping its runner", session_id)
        elif verb == "wake":
            self.runners.wake(session_id)

    async def _aclose(self) -> None:
        await self.deps.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    def shutdown(self) -> None:
        """Give running sessions back (the reaper hands them to another worker), end the
        warm pool's sandboxes, and stop."""
        if self.executor.loop.is_running():
            abandoned = asyncio.run_coroutine_threadsafe(self._abandon(), self.executor.loop)
            with contextlib.suppress(Exception):
                abandoned.result(20)
            with contextlib.suppress(Exception):
                self.executor.submit(self.pool.close).result(30)
        # Model clients and Redis connections close once the runs using them are cancelled,
        # on their own loop.
        self.executor.shutdown(timeout=15, last=self._aclose)
        for callback in self.on_close:
            with contextlib.suppress(Exception):
                callback()


_factory: Callable[[], WorkerContext] | None = None
_context: WorkerContext | None = None
_context_lock = threading.Lock()


def configure_worker(factory: Callable[[], WorkerContext], *, eager: bool = True) -> None:
    """Tell this process how to build its worker context (built lazily, once per process).

    With `eager`, the context is built when the worker is ready (threads/solo pools) or when
    a prefork child starts, so a misconfiguration shows at start-up rather than at the first
    task.
    """
    global _factory, _context
    _factory, _context = factory, None
    if eager:
        signals.worker_ready.connect(_eager_build, weak=False)
        signals.worker_process_init.connect(_fresh_child, weak=False)
    signals.worker_shutting_down.connect(_shutdown, weak=False)
    signals.worker_process_shutdown.connect(_shutdown, weak=False)


def _eager_build(sender: Any = None, **_: Any) -> None:
    pool = getattr(getattr(sender, "controller", None), "pool", None)
    if pool is not None and type(pool).__module__.endswith("prefork"):
        return  # children build their own after the fork
    current().start()
    settle_heap()


def _fresh_child(**_: Any) -> None:
    global _context
    _context = None  # never share a parent's loop or sockets across fork
    current().start()
    settle_heap()


def _shutdown(**_: Any) -> None:
    global _context
    with _context_lock:
        context, _context = _context, None
    if context is not None:
        context.shutdown()


def current() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            if _factory is None:
                raise RuntimeError(
                    "this Celery process has no Nightshift worker context: "
                    "start workers with `nightshift worker`"
                )
            _context = _factory()
        return _context


# ---------------------------------------------------------------- tasks


def _register_tasks(app: Celery) -> None:
    @app.task(name=RUN_SESSION, shared=False, acks_late=True, reject_on_worker_lost=True)
    def run_session_task(session_id: str) -> None:
        """Drain a session's prompt queue as its only runner (a duplicate returns at once)."""
        current().run_session(session_id)

    @app.task(name=task_name("build_image"), shared=False)
    def build_image_task(repo: str, force: bool = False, trigger: str = "schedule") -> str:
        """Build the image of a repo's base tip unless it exists (one build per repo and tip)."""
        return current().run_job("build_image", repo, force=force, trigger=trigger)

    @app.task(name=task_name("build_images"), shared=False)
    def build_images_task() -> str:
        """Fan out `build_image` for every registered repo."""
        return current().run_job("build_images")

    @app.task(name=task_name("maintain_pool"), shared=False)
    def maintain_pool_task() -> str:
        """Top up the warm pool of the worker process that takes this task (each worker also
        does it on its own timer)."""
        return current().run_job("maintain_pool")

    @app.task(name=task_name("reconcile_github"), shared=False)
    def reconcile_github_task() -> str:
        """Fetch the state of open pull requests (webhooks can be missed)."""
        return current().run_job("reconcile_github")
