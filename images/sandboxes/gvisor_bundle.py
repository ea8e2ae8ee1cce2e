"""The OCI specs runsc is given: a sandbox's container (`bundle_config`), each command's
process (`exec_process`), and where runsc puts the container's cgroups.

The container sees the same tree as under bubblewrap (read-only /usr and /etc files, the
overlay workspace and home, a private /tmp) served by gVisor's gofer; its init is the egress
bridge when the repo allows egress, else a sleeper. Memory and host tasks are limited for the
container as a whole by its cgroups; processes and CPU time per command by `nsexec`.

On a declared image (`image=`), the image's top-level directories and /etc come from the
sandbox's overlay instead of the host's (its symlinks are made in the bundle's empty root), and
`nsexec` is the statically linked build. The host's tools are mounted read-only at `HOST_ROOT`
with the same workspace, home and /tmp, for the platform's own `git` when the image has none:
`nsexec --root` runs it chrooted there, in the same container.
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
HOST_ROOT = f"{RUN_DIR}/host"
HOST_TOPS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
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
    image: tuple[Path, list[str]] | None = None,
) -> dict[str, object]:
    """The container's `config.json`; `egress` is (proxy socket dir, bridge ready dir) when
    the repo allows egress; `image` is (the overlay's merged root, the image's top-level
    directories) on a declared image."""
    ro = ["rbind", "ro", "nosuid", "nodev"]
    rw = ["rbind", "rw", "nosuid", "nodev"]
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
    ]
    host_tops = [(f"/{t}", str(Path("/", t).resolve())) for t in HOST_TOPS if Path("/", t).exists()]
    if image is None:
        tops, root_etc = host_tops, Path(etc)
    else:
        merged, names = image
        tops = [(f"/{name}", str(merged / name)) for name in names]
        root_etc = merged / "etc"
        tops += [(f"{HOST_ROOT}{dest}", src) for dest, src in host_tops]
        tops += [(f"{HOST_ROOT}/etc", str(etc))]
    for top, source in tops:
        mounts.append({"destination": top, "type": "bind", "source": source, "options": ro})
    mounts.append({"destination": "/etc", "type": "bind", "source": str(root_etc), "options": ro})
    if image is not None:
        for dest in ("/dev", "/proc"):
            mounts.append({"destination": f"{HOST_ROOT}{dest}", "type": "tmpfs", "source": "tmpfs"})
    binds = [
        ("/tmp", tmp, rw),  # noqa: S108
        (WORKDIR, workspace, rw),
        (HOME, home, rw),
        (NSEXEC_PATH, nsexec, ro),
    ]
    if image is not None:
        binds += [
            (f"{HOST_ROOT}/tmp", tmp, rw),  # noqa: S108
            (f"{HOST_ROOT}{WORKDIR}", workspace, rw),
            (f"{HOST_ROOT}{HOME}", home, rw),
        ]
        if shim is not None:  # only the host's tools view preloads it (its /etc says so)
            binds.append((f"{HOST_ROOT}{SHIM_PATH}", shim, ro))
    elif shim is not None:
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
    host_view: bool = False,
) -> dict[str, object]:
    """The `runsc exec --process` spec of one command: `nsexec` as root, which drops to
    `owner` with the per-command limits, then runs `argv`."""
    uid, gid = owner
    caps = [*EXEC_CAPS, "CAP_SYS_CHROOT"] if host_view else EXEC_CAPS  # nsexec drops them all
    return {
        "user": {"uid": 0, "gid": 0},
        "args": [
            NSEXEC_PATH,
            *(["--root", HOST_ROOT] if host_view else []),
            str(uid),
            str(gid),
            str(limits.pids),
            str(limits.cpu_seconds),
            *argv,
        ],
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
    }
