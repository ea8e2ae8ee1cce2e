"""The OCI specs runsc is given: a sandbox's container (`bundle_config`), each command's
process (`exec_process`), and where runsc puts the container's cgroups.

The container sees the same tree as under bubblewrap (read-only /usr and /etc files, the
overlay workspace and home, a private /tmp) served by gVisor's gofer; its init is the egress
bridge when the repo allows egress, else a sleeper. Memory and host tasks are limited for the
container as a whole by its cgroups; processes and CPU time per command by `nsexec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from images.sandboxes.base import HOME, WORKDIR, Limits
from images.sandboxes.environment import (
    BRIDGE_COMMAND,
    BRIDGE_PATH,
    BRIDGE_SOURCE,
    EGRESS_DIR,
    RUN_DIR,
)
from images.sandboxes.limits import CGROUP_ROOT, CgroupLayout, Controller, mounts

GROUP_DIR = "nightshift-gvisor"
MEMORY_OVERHEAD_MB = 64  # the sentry's own memory, inside the container's cgroup
# Host tasks (threads and ptrace stubs) the sentry needs: ~170 idle, several per process.
HOST_TASKS_BASE = 512
HOST_TASKS_PER_PROCESS = 16
NSEXEC_PATH = f"{RUN_DIR}/nsexec"
SHIM_PATH = f"{RUN_DIR}/statx-shim.so"
READY_DIR = f"{RUN_DIR}/state"
EXEC_CAPS = ["CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
CAP_SETS = ("bounding", "effective", "permitted", "inheritable")


def runsc_layout() -> CgroupLayout:
    """Where runsc puts a container's cgroups (`/nightshift-gvisor/<name>` per hierarchy)."""
    memory = pids = None
    unified = None
    for point, fstype, opts in mounts():
        if not point.startswith(str(CGROUP_ROOT)):
            continue
        if fstype == "cgroup2":
            unified = Path(point) / GROUP_DIR
        elif "memory" in opts:
            memory = Controller(1, Path(point) / GROUP_DIR)
        elif "pids" in opts:
            pids = Controller(1, Path(point) / GROUP_DIR)
    if memory is None and unified is not None:
        memory = Controller(2, unified)
        pids = pids or Controller(2, unified)
    return CgroupLayout(memory=memory, pids=pids, unified=None)


def cpuacct_base() -> Path | None:
    """The v1 cpuacct directory runsc puts containers' cgroups in, if the host has one."""
    found = None
    for point, fstype, opts in mounts():
        if fstype == "cgroup" and "cpuacct" in opts:
            found = Path(point) / GROUP_DIR
    return found


def bundle_config(
    *,
    etc: Path,
    tmp: Path,
    workspace: Path,
    home: Path,
    nsexec: Path,
    shim: Path | None,
    egress: tuple[Path, Path] | None,
    limits: Limits,
    cgroup_name: str,
) -> dict[str, object]:
    """The container's `config.json`; `egress` is (proxy socket dir, bridge ready dir) when
    the repo allows egress."""
    ro = ["rbind", "ro", "nosuid", "nodev"]
    rw = ["rbind", "rw", "nosuid", "nodev"]
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
    ]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.exists():
            mounts.append(
                {
                    "destination": f"/{top}",
                    "type": "bind",
                    "source": str(path.resolve()),
                    "options": ro,
                }
            )
    mounts.append({"destination": "/etc", "type": "bind", "source": str(etc), "options": ro})
    binds = [
        ("/tmp", tmp, rw),  # noqa: S108
        (WORKDIR, workspace, rw),
        (HOME, home, rw),
        (NSEXEC_PATH, nsexec, ro),
    ]
    if shim is not None:
        binds.append((SHIM_PATH, shim, ro))
    if egress is not None:
        egress_dir, ready_dir = egress
        binds += [
            (BRIDGE_PATH, BRIDGE_SOURCE, ro),
            (EGRESS_DIR, egress_dir, ro),
            (READY_DIR, ready_dir, rw),
        ]
    for dest, src, opts in binds:
        mounts.append({"destination": dest, "type": "bind", "source": str(src), "options": opts})
    if egress is not None:
        # The bridge is the container's init, as root inside gVisor: the agent's uid
        # cannot signal it.
        init = [*BRIDGE_COMMAND, "--ready", f"{READY_DIR}/ready"]
    else:
        init = ["/bin/sleep", "infinity"]
    rlimits = [
        {"type": "RLIMIT_NPROC", "soft": limits.pids, "hard": limits.pids},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 4096},
    ]
    return {
        "ociVersion": "1.0.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": init,
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "capabilities": {k: [] for k in CAP_SETS},
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "cgroupsPath": f"/{GROUP_DIR}/{cgroup_name}",
            "resources": {
                "memory": {
                    "limit": (limits.memory_mb + MEMORY_OVERHEAD_MB) << 20,
                    "swap": (limits.memory_mb + MEMORY_OVERHEAD_MB) << 20,
                },
                "pids": {"limit": limits.pids * HOST_TASKS_PER_PROCESS + HOST_TASKS_BASE},
            },
        },
    }


def exec_process(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    owner: tuple[int, int],
    limits: Limits,
) -> dict[str, object]:
    """The `runsc exec --process` spec of one command: `nsexec` as root, which drops to
    `owner` with the per-command limits, then runs `argv`."""
    uid, gid = owner
    return {
        "user": {"uid": 0, "gid": 0},
        "args": [NSEXEC_PATH, str(uid), str(gid), str(limits.pids), str(limits.cpu_seconds), *argv],
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {k: EXEC_CAPS for k in ("bounding", "effective", "permitted")},
    }
