"""Is an owner id's process alive (`app/liveness.py`): the reaper and ownership judge leases by
it, so a wrong "gone" would run a session twice and a wrong "alive" would strand it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from app.liveness import owner_alive, process_alive

HOST = socket.gethostname()


def test_this_process_is_alive_without_asking_proc() -> None:
    assert process_alive(HOST, str(os.getpid()))
    assert owner_alive(f"{HOST}-{os.getpid()}-runner")


def test_an_exited_process_and_an_unreaped_one_are_gone() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    assert not process_alive(HOST, str(exited.pid))
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited, not yet waited for: state Z, which counts as gone.
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        assert not process_alive(HOST, str(zombie.pid))
    finally:
        zombie.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(HOST, str(running.pid))
    finally:
        running.kill()
        running.wait()


def test_another_hosts_process_and_a_malformed_pid() -> None:
    assert process_alive("some-other-host", "1")  # only its expiry can tell
    assert not process_alive(HOST, "not-a-pid")
