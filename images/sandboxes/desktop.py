"""A desktop inside a local sandbox: Xvfb, a window manager and x11vnc, run as one long command
of the sandbox, with x11vnc listening only on a Unix socket in the sandbox's own /tmp.

The sandbox's network namespace holds nothing but its own `lo`, and x11vnc opens no TCP port
(`-rfbport 0`), so nothing on the host's network can reach the VNC server. The host reaches it
through the socket file, and that file sits in a directory the sandbox writes: everything on the
way to it is opened without following a link (`O_PATH | O_NOFOLLOW`, component by component),
it must be a socket, and the connection goes through `/proc/self/fd/N`, the very inode checked.
So a sandbox that swaps the socket for a symlink to a host socket gets a refusal, not a
connection.

Programs the agent runs see the display as `DISPLAY=:99`: the X socket is in the shared /tmp.
The desktop ends with the sandbox (its command is cancelled by `terminate()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from images.sandboxes.base import ExecResult, Sandbox, SandboxError

DISPLAY = ":99"
WIDTH, HEIGHT = 1280, 800
SOCKET_DIR = ".nightshift-desktop"
SOCKET_NAME = "vnc.sock"
START_TIMEOUT_S = 20.0
BACKENDS = ("bwrap",)
"""Backends whose sandbox /tmp is a host directory the API can reach (gVisor keeps its sockets
inside its own kernel; Modal's are on another machine)."""

LAUNCH = f"""
for bin in Xvfb x11vnc; do
  command -v "$bin" >/dev/null 2>&1 || {{
    echo "$bin is not installed in this sandbox's environment" >&2; exit 127; }}
done
mkdir -p /tmp/.X11-unix /tmp/{SOCKET_DIR} || exit 1
chmod 1777 /tmp/.X11-unix 2>/dev/null
chmod 700 /tmp/{SOCKET_DIR}
rm -f /tmp/{SOCKET_DIR}/{SOCKET_NAME}
Xvfb {DISPLAY} -screen 0 {WIDTH}x{HEIGHT}x24 -nolisten tcp -noreset -wr >/tmp/{SOCKET_DIR}/xvfb.log 2>&1 &
n=0
until [ -S /tmp/.X11-unix/X{DISPLAY[1:]} ]; do
  n=$((n + 1))
  if [ $n -gt 150 ]; then echo "Xvfb did not start:" >&2; tail -5 /tmp/{SOCKET_DIR}/xvfb.log >&2; exit 1; fi
  sleep 0.1
done
export DISPLAY={DISPLAY}
for wm in matchbox-window-manager openbox; do
  if command -v "$wm" >/dev/null 2>&1; then
    if [ "$wm" = matchbox-window-manager ]; then "$wm" -use_titlebar no >/dev/null 2>&1 &
    else "$wm" >/dev/null 2>&1 &
    fi
    break
  fi
done
exec x11vnc -display {DISPLAY} -unixsock /tmp/{SOCKET_DIR}/{SOCKET_NAME} -rfbport 0 -forever \\
  -shared -alwaysshared -dontdisconnect -nopw -noipv6 -nolookup -noxdamage -quiet -o /tmp/{SOCKET_DIR}/x11vnc.log
"""


class DesktopUnavailable(SandboxError):
    """This sandbox cannot show a desktop: its backend, missing programs, or a failed start."""


def open_socket(tmp: Path, directory: str = SOCKET_DIR, name: str = SOCKET_NAME) -> socket.socket:
    """A connection to the socket `directory/name` under `tmp` (the sandbox's /tmp on the host;
    the desktop's VNC socket by default), following no link the sandbox may have placed;
    OSError when there is none to be had."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(tmp, flags | os.O_DIRECTORY)
    fds = [top]
    try:
        sub = os.open(directory, flags | os.O_DIRECTORY, dir_fd=top)
        fds.append(sub)
        target = os.open(name, flags, dir_fd=sub)
        fds.append(target)
        if not stat.S_ISSOCK(os.fstat(target).st_mode):
            raise OSError(f"{directory}/{name} in the sandbox is not a socket")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(f"/proc/self/fd/{target}")
        except OSError:
            conn.close()
            raise
        return conn
    finally:
        for fd in fds:
            os.close(fd)


@dataclass
class Desktop:
    """A desktop running in one sandbox."""

    sandbox_id: str
    tmp: Path
    task: asyncio.Task[ExecResult]
    started_at: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        return not self.task.done()

    def connect(self) -> socket.socket:
        """A new connection to its VNC server (blocking; the socket is local and listening)."""
        if not self.alive:
            raise DesktopUnavailable("the desktop has stopped")
        return open_socket(self.tmp)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SandboxError):
            await self.task


def supported(sandbox: Sandbox, what: str = "show a desktop") -> str:
    """Why `sandbox` cannot `what` (a desktop, the IDE: programs reached on a socket in its
    host-side /tmp), or "" when it can."""
    if sandbox.backend not in BACKENDS:
        return (
            f"the {sandbox.backend} sandbox backend cannot {what}; it needs "
            f"NIGHTSHIFT_SANDBOX={' or '.join(BACKENDS)} and the API in the same process "
            "(embedded mode)"
        )
    if sandbox.tmp is None:
        return "this sandbox has no /tmp on the host"
    return ""


async def start_desktop(sandbox: Sandbox, timeout: float = START_TIMEOUT_S) -> Desktop:
    """Start Xvfb, a window manager and x11vnc in `sandbox` and wait until the VNC socket
    answers; call on the loop the sandbox's commands run on."""
    reason = supported(sandbox)
    if reason:
        raise DesktopUnavailable(reason)
    tmp = sandbox.tmp
    assert tmp is not None  # `supported` refused a sandbox without one
    lifetime = sandbox.deadline - time.monotonic()
    task = asyncio.ensure_future(
        sandbox.exec(["/bin/sh", "-c", LAUNCH], timeout=max(lifetime, 1.0), output_cap=16384)
    )
    # Its end (the sandbox terminated, a limit) is read by `alive`; nothing else awaits it.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    desktop = Desktop(sandbox.id, tmp, task)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.done():
            break
        try:
            probe = await asyncio.to_thread(open_socket, tmp)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        probe.close()
        return desktop
    if not task.done():
        await desktop.stop()
        raise DesktopUnavailable(f"the desktop did not start within {timeout:g} s")
    try:
        result = task.result()
    except SandboxError as exc:
        raise DesktopUnavailable(f"the desktop could not start: {exc}") from exc
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise DesktopUnavailable(
        f"the desktop exited with status {result.exit_code}: {' '.join(detail) or 'no output'}"
    )
