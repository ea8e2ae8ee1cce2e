"""Where a sandbox's commands start: a mount namespace of its own that holds the host's mounts
and this sandbox's, and none of the other sandboxes'.

bubblewrap copies the mount namespace it starts in, then reads the whole of
/proc/self/mountinfo once for each bind it makes (about fifteen per command). On a root host
every live sandbox adds its disk and its overlay to the host's mount table, so each command
costs more the more sandboxes run: with 200 alive, a command took 66 ms instead of 23 on a
2-core host, every command of every sandbox.

So, on a root host:
- the sandboxes' directory is a private mount point of its own while sandboxes use it
  (`SandboxesRoot`), so one lazy unmount takes every sandbox's mounts out of a namespace;
- a sandbox gets one namespace (`make_namespace`, by a small C program built once, as
  `dropuid` is: system calls only, no mount table read): a copy of the host's, its own
  sandbox directory moved aside, the sandboxes' directory detached, its own moved back to the
  same path. What bwrap reads there is the host's mounts and this sandbox's, whatever else
  runs;
- the server holds the namespace by a descriptor, not a bind mount or a process: nothing is
  left behind by a crash, and closing the descriptor at the sandbox's end releases it;
- every command enters it (`nsenter --mount`) before bwrap starts.

When it is made:
- joining a namespace (`nsenter`, one more exec) costs a command 2-3 ms, and each sandbox on
  the host costs a command without one about 0.2 ms: namespaces pay from about a dozen live
  sandboxes, so they are made from `NAMESPACE_FROM` on;
- making one costs about what it saves one command (12 ms with 200 sandboxes alive), so a
  sandbox's first command starts in the host's namespace and the namespace is made, on a
  thread of its own, for a later one: a sandbox that runs one command never pays for it.

Where it cannot be made (not root, no C compiler, mounts of another process already under
the sandboxes' directory, a mount call that fails), commands start in the host's namespace,
as they did before.

The other namespace commands may join is a network one a sandbox's commands share
(`make_netns`, bwrap.py's `share_network`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path

from images.sandboxes.base import SandboxError, SandboxUnavailable
from images.sandboxes.environment import host_env
from images.sandboxes.gvisor_helpers import helper
from images.sandboxes.overlay import unmount

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID_NODEV = 2 | 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_PRIVATE = 1 << 18

NAMESPACE_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <unistd.h>

/* mntns SANDBOX STAGE ROOT: in a new mount namespace, keep of everything under ROOT only
   SANDBOX and its mounts (moved aside to STAGE, ROOT detached, moved back), print "ready",
   then wait until stdin closes: the server takes hold of /proc/PID/ns/mnt meanwhile. System
   calls only: mount(8) and umount(8) would each read the whole mount table. */
int main(int argc, char **argv) {
    if (argc != 4) { fputs("usage: mntns SANDBOX STAGE ROOT\n", stderr); return 125; }
    if (unshare(CLONE_NEWNS) != 0) { perror("mntns: unshare"); return 125; }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        perror("mntns: making the copy private"); return 125;
    }
    if (mount(argv[1], argv[2], NULL, MS_BIND | MS_REC, NULL) != 0) {
        perror("mntns: setting the sandbox aside"); return 125;
    }
    if (umount2(argv[3], MNT_DETACH) != 0) { perror("mntns: detaching the others"); return 125; }
    if (mount(argv[2], argv[1], NULL, MS_MOVE, NULL) != 0) {
        perror("mntns: moving the sandbox back"); return 125;
    }
    fputs("ready\n", stdout);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {}
    return 0;
}
"""
"""The namespace maker, built once per state dir (as `dropuid` is)."""

UNMOUNT_TRIES = 50
"""How often the last sandbox to leave tries to unmount the directory's bind (20 ms apart)."""

NAMESPACE_FROM = 16
"""Live sandboxes (of one backend) from which their commands get namespaces of their own."""

_makers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-mntns")


def mount_points(prefix: str) -> list[str]:
    """Every mount point of this process's namespace at or under `prefix` (a directory)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
        for line in table:
            target = line.split(" ", 5)[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found


class SandboxesRoot:
    """The sandboxes' directory as a private mount point while any sandbox of ours uses it.

    `enter` before a sandbox makes its mounts, `leave` once they are gone. The first to enter
    binds the directory onto itself, unless mounts are already under it (another process's,
    or a crashed one's not yet swept): a bind over them would hide them from their paths, so
    sandboxes then go without a namespace of their own until none is left. The last to leave
    unmounts the bind, unless something is still mounted under it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._users = 0
        self.ready = False

    def enter(self) -> bool:
        """Count a sandbox in; True when the directory is a private mount point for it."""
        with self._lock:
            self._users += 1
            if not self.ready and os.geteuid() == 0:
                self.ready = self._make()
            return self.ready

    def leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or not self.ready:
                return
            root = str(self.root)
            # Not lazy: a mount still under it (another process's sandbox) keeps it (EBUSY).
            # So can, for a moment, a killed command still exiting with a file of its sandbox
            # open (its bwrap options): that is waited out, briefly.
            for _ in range(UNMOUNT_TRIES):
                if _libc.umount2(root.encode(), 0) == 0:
                    self.ready = False
                    return
                if ctypes.get_errno() in (errno.EINVAL, errno.ENOENT):
                    self.ready = False  # no longer a mount point: someone else unmounted it
                    return
                if mount_points(root) != [root]:
                    return  # another process's sandboxes: theirs to leave
                time.sleep(0.02)
            log.warning("sandboxes: %s stays mounted: still in use", root)

    def _make(self) -> bool:
        root = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        mounted = mount_points(root)
        if root not in mounted:
            if mounted:
                return False
            if _libc.mount(root.encode(), root.encode(), None, _MS_BIND, None) != 0:
                log.warning("sandboxes: binding %s: %s", root, os.strerror(ctypes.get_errno()))
                return False
            # nosuid, nodev, as every mount of a sandbox is (`overlay.py`, `disk.py`).
            flags = _MS_REMOUNT | _MS_BIND | _MS_NOSUID_NODEV
            if _libc.mount(None, root.encode(), None, flags, None) != 0:
                error = os.strerror(ctypes.get_errno())
                _libc.umount2(root.encode(), 0)
                log.warning("sandboxes: %s not nosuid: %s", root, error)
                return False
        # Private: what is mounted under it never spreads to other namespaces, and it can
        # hold the namespaces' copies being moved about.
        if _libc.mount(None, root.encode(), None, _MS_PRIVATE, None) != 0:
            log.warning("sandboxes: %s not private: %s", root, os.strerror(ctypes.get_errno()))
            return False
        return True


_build_lock = threading.Lock()


@cache
def _maker(state_dir: Path) -> Path | None:
    with _build_lock:
        try:
            return helper(state_dir, NAMESPACE_C, "mntns", shared=False)
        except SandboxUnavailable as exc:
            log.warning("sandboxes: commands start in the host's mount namespace: %s", exc)
            return None


def make_namespace(state_dir: Path, sandbox_dir: Path, stage: Path, root: Path) -> int | None:
    """A descriptor holding a new mount namespace in which, of everything under `root`, only
    `sandbox_dir` and its mounts remain; None (logged) when it could not be made."""
    maker = _maker(state_dir)
    if maker is None:
        return None
    stage.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(maker), str(sandbox_dir), str(stage), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    fd: int | None = None
    try:
        if proc.stdout.readline().strip() == b"ready":
            fd = os.open(f"/proc/{proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    if fd is None:
        log.warning(
            "sandbox %s: commands start in the host's mount namespace: %s",
            sandbox_dir.name,
            err.decode(errors="replace").strip() or f"exit {proc.returncode}",
        )
    return fd


def start_namespace(
    state_dir: Path, sandbox_dir: Path, stage: Path, root: Path
) -> Future[int | None]:
    """`make_namespace` on a thread of its own, so a sandbox's start does not wait for it."""
    return _makers.submit(make_namespace, state_dir, sandbox_dir, stage, root)


def nsenter_args(namespace_fd: int | None, netns: Path | None) -> list[str]:
    """`nsenter` options joining the sandbox's mount namespace (through this process's
    descriptor, which nsenter, root as we are, opens by /proc) and its shared network."""
    joins = []
    if namespace_fd is not None:
        joins.append(f"--mount=/proc/{os.getpid()}/fd/{namespace_fd}")
    if netns is not None:
        joins.append(f"--net={netns}")
    return ["nsenter", *joins, "--"] if joins else []


def make_netns(path: Path) -> None:
    """A network namespace with only `lo` (up), held by a bind mount at `path`: the one a
    sandbox's commands share once a background job asks for it (`BwrapSandbox.share_network`)."""
    path.touch()
    for argv in (
        ["unshare", f"--net={path}", "true"],
        ["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=host_env())
        if done.returncode != 0:
            unmount(str(path))
            raise SandboxError(f"could not make the sandbox's network: {done.stderr.strip()}")
