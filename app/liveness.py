"""Is the process behind an owner id (a lease holder, a Slack event's handler) still running?

Owner ids start with `<host>-<pid>`; only that host can tell whether the process is alive.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from images.sandboxes.limits import pid_alive


def process_alive(host: str, pid: str) -> bool:
    """False only when `pid` on this host is certainly gone; another host's process may live."""
    if host != socket.gethostname():
        return True  # another host: only the owner's expiry can tell
    if pid == str(os.getpid()):
        # This very process: alive. Asking /proc would cost a walk over all its threads
        # (/proc/PID/stat sums them), hundreds during a burst, for every active session the
        # reaper looks at.
        return True
    return pid.isdigit() and pid_alive(int(pid)) and not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that exited but that its parent has not waited for yet (state Z): gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def owner_alive(owner: str) -> bool:
    """For an owner id `host-pid-x`: False only when that process is certainly gone."""
    host, _, pid = owner.rpartition("-")[0].rpartition("-")
    return process_alive(host, pid)
