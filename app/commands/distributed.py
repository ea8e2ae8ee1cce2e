"""Distributed mode on the command line: `nightshift worker` and `nightshift beat`."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Literal

import typer

from app.commands.common import console, fail, load_settings
from app.settings import Settings


def _broker(settings: Settings) -> str:
    if not settings.broker_url:
        fail(
            "NIGHTSHIFT_BROKER_URL is not set: workers and beat run in distributed mode only "
            "(e.g. NIGHTSHIFT_BROKER_URL=redis://127.0.0.1:6379/0). Without it, "
            "`nightshift serve` runs sessions and scheduled jobs in-process."
        )
    return settings.broker_url


def _health_server(port: int, ready: threading.Event) -> None:
    """GET / answers 200 once the worker's context is up, 503 before (container probes)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = ready.is_set()
            body = b"ok\n" if ok else b"starting\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Sessions run at once (NIGHTSHIFT_WORKER_CONCURRENCY)", min=1),
    ] = None,
    pool: Annotated[
        Literal["threads", "prefork", "solo"],
        typer.Option(help="Celery pool: threads share one event loop per process"),
    ] = "threads",
    name: Annotated[
        str | None, typer.Option(help="Node name, unique per host (default: worker@HOSTNAME)")
    ] = None,
    queues: Annotated[
        str, typer.Option(help="Queues to consume, comma-separated")
    ] = "nightshift.sessions,nightshift.jobs",
    loglevel: Annotated[str, typer.Option(help="Log level")] = "INFO",
    health_port: Annotated[
        int | None, typer.Option(help="Serve a liveness probe on this port (GET /)")
    ] = None,
) -> None:
    """Run a Celery worker: sessions and scheduled jobs from Redis (distributed mode)."""
    from app.worker_runtime import build_worker
    from workers.celery_app import WorkerContext, configure_worker, make_celery
    from workers.wire import CeleryConfig

    settings = load_settings()
    broker = _broker(settings)
    from workers.agent.plugins import PluginLoadError, load_plugins

    try:
        load_plugins(settings.agent_config().plugins)
    except PluginLoadError as exc:
        fail(str(exc))
    if not settings.worker_token:
        fail(
            "NIGHTSHIFT_WORKER_TOKEN is not set: workers authenticate to the API's internal "
            "routes with it (the same value as on the API)"
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per control-plane call
    node = name or f"worker@{socket.gethostname()}"
    ready = threading.Event()
    if health_port:
        _health_server(health_port, ready)

    try:  # a bad configuration fails here, before Celery starts
        prebuilt = [build_worker(settings, node=node)]
    except Exception as exc:
        fail(f"the worker cannot start: {exc}")

    def factory() -> WorkerContext:
        # A prefork child must not reuse what its parent built (sockets, threads).
        if prebuilt and pool != "prefork":
            context = prebuilt.pop()
        else:
            context = build_worker(settings, node=node)
        ready.set()
        return context

    configure_worker(factory)
    _defer_celery_logs()
    celery = make_celery(CeleryConfig(broker, settings.visibility_timeout))
    console.print(
        f"Nightshift worker [bold]{node}[/]: {concurrency or settings.worker_concurrency} "
        f"session(s) at once ({pool} pool), control plane {settings.worker_control_url}",
        highlight=False,
    )
    celery.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--pool={pool}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--hostname={node}",
            f"--queues={queues}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _defer_celery_logs() -> None:
    """Write the loggers Celery sets up from a thread of their own (`app/log_writer.py`): an
    output nobody reads drops lines instead of stalling the runners that log."""
    from celery import signals

    from app.log_writer import LogWriter

    writer = LogWriter()

    def defer(logger: logging.Logger | None = None, **_: object) -> None:
        if logger is not None:
            writer.take(logger)

    signals.after_setup_logger.connect(defer, weak=False)
    signals.after_setup_task_logger.connect(defer, weak=False)


def beat(
    loglevel: Annotated[str, typer.Option(help="Log level")] = "INFO",
) -> None:
    """Run Celery beat: image builds and PR reconciliation on schedule.

    Run one beat per deployment. A second one does no harm (builds are single-flight per repo
    and a build of an unchanged tip is skipped) but doubles the queue traffic. Warm pools are
    not on it: each worker tops up its own.
    """
    from workers.scheduled import schedule
    from workers.wire import CeleryConfig, celery_client

    settings = load_settings()
    broker = _broker(settings)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        j
        for j in schedule(settings.image_interval, settings.reconcile_interval)
        if j.interval_s > 0
    ]
    celery = celery_client(CeleryConfig(broker, settings.visibility_timeout, jobs))
    console.print(
        "Nightshift beat: " + ", ".join(f"{j.job} every {j.interval_s:g}s" for j in jobs),
        highlight=False,
    )
    celery.start(
        [
            "beat",
            f"--loglevel={loglevel}",
            f"--schedule={data_dir / 'celerybeat-schedule'}",
        ]
    )
