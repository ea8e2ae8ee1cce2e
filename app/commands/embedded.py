"""A server for one command: when nothing answers at the default URL, `nightshift run` serves
the local data dir itself on a free loopback port, and talks to it like to any other server.

It runs with NIGHTSHIFT_AUTH=local (the operator of this machine, by their git identity), bound
to 127.0.0.1 only and for the command's duration only; its links are the data dir's usual
public URL (NIGHTSHIFT_PUBLIC_URL, else where `nightshift serve` listens), which stay valid
after the embedded server is gone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.commands.client import ApiError
from app.commands.common import console, err, load_settings, runtime_from
from app.errors import ServiceError
from app.schemas import RepoCreate

if TYPE_CHECKING:
    from app.runtime import Runtime


@dataclass
class Embedded:
    url: str
    runtime: Runtime
    quiet: bool = False
    """Notes go to stderr (stdout carries JSON lines)."""

    def register(self, repo: str) -> str:
        """The name of `repo`; a local repository path is registered first, as the operator
        (`nightshift repos add`), since the API keeps local paths to NIGHTSHIFT_REPO_ROOTS."""
        if not Path(repo).expanduser().exists():
            return repo
        row = self.runtime.repos.find_local(repo)
        if row is None:
            try:
                row = self.runtime.repos.add(RepoCreate(url=repo))
            except ServiceError as exc:
                raise ApiError(str(exc)) from exc
            (err if self.quiet else console).print(
                f"[dim]· registered repo {row.name} ({row.url})[/]", highlight=False
            )
        return row.name

    def wait_for_runner(self, session_id: str, timeout: float = 30.0) -> None:
        """Let the runner finish its clean-up (snapshot, lease) before the server goes."""
        runners = getattr(self.runtime.dispatcher, "runners", {})
        deadline = time.monotonic() + timeout
        while session_id in runners and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def embedded_server(absent: str, quiet: bool = False) -> Iterator[Embedded]:
    """Serve the local data dir on 127.0.0.1:<free port> until the block ends (`absent`: the
    URL where no server answered, for the line that says so)."""
    import uvicorn

    from app.main import create_app

    usual = load_settings()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = load_settings(
        host="127.0.0.1",
        auth="local",
        public_url=usual.base_url,
        idle_seconds=0,  # one prompt: no runner waiting for follow-ups, no build schedule
        image_interval=0,
    )
    try:
        with runtime_from(settings) as runtime:
            runtime.start()
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(runtime=runtime),
                    log_level="warning",
                    ws_per_message_deflate=False,
                    timeout_graceful_shutdown=3,
                    lifespan="on",
                )
            )
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name="embedded-server", daemon=True
            )
            thread.start()
            deadline = time.monotonic() + 30
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            (err if quiet else console).print(
                f"[yellow]· no server at {absent}: serving {settings.data_dir.resolve()} "
                f"at {url} for this command only[/]",
                highlight=False,
            )
            try:
                yield Embedded(url, runtime, quiet)
            finally:
                server.should_exit = True
                thread.join(10)
    finally:
        sock.close()
