"""`nightshift serve --processes N`: N API processes behind one port.

The parent only supervises: it migrates the control DB once, then starts N children of
`nightshift serve` and restarts one that dies. Every child listens on the public port with
SO_REUSEPORT (the kernel spreads new connections over them) and on a peer port of its own,
`port + 1 + i`, where the others forward the requests of the sessions it owns
(`app/api/forward.py`). The peer ports are fixed so that a restarted child comes back on the
same address, and so with the same sandbox directory, whose left-over mounts it releases.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

from app.settings import Settings

RESTART_DELAY_S = 1.0
STOP_GRACE_S = 20.0
STARTUP_FAILED = 3
"""A child's exit status when it could not start (`serve` exits so too)."""


def peer_host(settings: Settings) -> str:
    """The address the children are reached on by their peers."""
    if settings.peer_url:
        return urlsplit(settings.peer_url).hostname or "127.0.0.1"
    return "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host


def child_sockets(settings: Settings, slot: int) -> list[socket.socket]:
    """A child's listening sockets: the shared public port, and its own peer port."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    public = socket.socket(family, socket.SOCK_STREAM)
    public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    public.bind((settings.host, settings.port))
    peer = socket.socket(family, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    peer.bind((settings.host, settings.port + 1 + slot))
    for sock in (public, peer):
        sock.listen(2048)
    return [public, peer]


def child_env(settings: Settings, slot: int, secret: str, count: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["NIGHTSHIFT_PEER_URL"] = f"http://{peer_host(settings)}:{settings.port + 1 + slot}"
    env["NIGHTSHIFT_PEER_SECRET"] = secret
    env["NIGHTSHIFT_DATA_DIR"] = str(settings.data_dir.resolve())
    # The backlog bound is the host's: split among its processes, so that a burst is shed as
    # soon as with one process instead of queueing in each of them (they share the cores).
    env["NIGHTSHIFT_MAX_PENDING_CREATES"] = str(-(-settings.max_pending_creates // count))
    return env


def supervise(settings: Settings, count: int, host: str | None, port: int | None) -> int:
    """Run `count` children until SIGTERM or SIGINT; returns the exit status."""
    from app.db import control_engine
    from app.wiring import init_control_db, resolved

    settings = resolved(settings)
    engine = control_engine(settings.control_db_url)
    init_control_db(engine)  # once, before the children race to migrate
    engine.dispose()
    configured = settings.peer_secret or settings.worker_token
    secret = configured.get_secret_value() if configured else secrets.token_urlsafe(32)
    argv = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
    argv += ["--host", host or settings.host, "--port", str(port or settings.port)]
    stopping = False

    def start(slot: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*argv, "--child", str(slot)], env=child_env(settings, slot, secret, count)
        )

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = {slot: start(slot) for slot in range(count)}
    status = 0
    while not stopping:
        time.sleep(0.2)
        for slot, child in list(children.items()):
            if child.poll() is None or stopping:
                continue
            if child.returncode == STARTUP_FAILED:  # a port taken, bad settings: not transient
                print(f"API process {slot} could not start; stopping the others")
                stopping, status = True, STARTUP_FAILED
                break
            print(f"API process {slot} exited with {child.returncode}; restarting it")
            time.sleep(RESTART_DELAY_S)
            children[slot] = start(slot)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return status
