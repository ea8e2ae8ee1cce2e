"""Resource limits for local sandboxes: a cgroup per sandbox where the host allows it.

Memory: cgroup v2 `memory.max` where the v2 memory controller is ours to use, else cgroup
v1 `memory.limit_in_bytes`, else `RLIMIT_AS` (allocations then fail instead of a kill).
Processes: a pids cgroup per sandbox (`pids.max`), so one sandbox's fork bomb cannot starve
another; without one, each command gets a user namespace of its own and `RLIMIT_NPROC`
inside it, which the kernel (>= 5.14) counts per namespace rather than per host uid.
CPU time: `RLIMIT_CPU` per process (SIGXCPU, exit 152). A v2 cgroup (even one without
controllers, as on hybrid hosts) also gives `cgroup.kill`, which ends every process of a
sandbox at once.

Cgroups are named `<server pid>-<sandbox id>` under a `nightshift` directory below the
server's own cgroup, so a restarted server can tell its predecessor's leftovers from the live
sandboxes of another server on the same host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from images.sandboxes.base import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_DIR = "nightshift"
CPU_GRACE_S = 5  # hard RLIMIT_CPU above the soft one: SIGXCPU first (152), not SIGKILL (137)


@dataclass(frozen=True)
class Controller:
    version: int  # 1 or 2
    base: Path  # the `nightshift` directory sandboxes are created in


@dataclass(frozen=True)
class CgroupLayout:
    """Which per-sandbox cgroups this host lets us create."""

    memory: Controller | None = None
    pids: Controller | None = None
    unified: Path | None = None
    """A v2 `nightshift` directory (for `cgroup.kill`), even when it has no controllers."""

    def describe(self) -> dict[str, str]:
        def one(c: Controller | None, fallback: str) -> str:
            return f"cgroup v{c.version} ({c.base})" if c else fallback

        return {
            "memory": one(self.memory, "RLIMIT_AS (no writable memory cgroup)"),
            "pids": one(self.pids, "RLIMIT_NPROC in a user namespace per command"),
            "kill": str(self.unified / "*/cgroup.kill") if self.unified else "process walk",
        }


NO_CGROUPS = CgroupLayout()


def mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                opts = set(rfields[2].split(",")) | set(fields[5].split(","))
                found.append((fields[4].replace("\\040", " "), rfields[0], opts))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" for v2."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _probe(base: Path, files: dict[str, str]) -> bool:
    """Can we create a child under `base` and write its limit files?"""
    probe = base / f"probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        base.mkdir(exist_ok=True)
        probe.mkdir()
    except OSError:
        return False
    try:
        for name, value in files.items():
            (probe / name).write_text(value)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def _v2_enable(own: Path, base: Path, controller: str) -> bool:
    """Enable a v2 controller for children of `base` (a child of our own cgroup `own`)."""
    try:
        if controller not in (own / "cgroup.controllers").read_text().split():
            return False
        for parent in (own, base):
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            if controller not in enabled:
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        return True
    except OSError:
        # Typically EBUSY: our own cgroup holds processes, so v2 forbids enabling controllers
        # below it ("no internal processes"); the v1 hierarchy or rlimits take over.
        return False


@cache
def detect(root: Path = CGROUP_ROOT) -> CgroupLayout:
    """Find writable places for per-sandbox memory and pids cgroups (tried once)."""
    if os.geteuid() != 0 and not os.access(root, os.W_OK):
        return NO_CGROUPS
    own = _own_paths()
    memory = pids = None
    unified = None
    v1: dict[str, Path] = {}
    for point, fstype, opts in mounts():
        if not point.startswith(str(root)):
            continue
        if fstype == "cgroup2":
            mine = Path(point + own.get("", "/").rstrip("/"))
            base = mine / GROUP_DIR
            if _probe(base, {}):
                unified = base
                if (
                    memory is None
                    and _v2_enable(mine, base, "memory")
                    and _probe(base, {"memory.max": str(64 << 20)})
                ):
                    memory = Controller(2, base)
                if (
                    pids is None
                    and _v2_enable(mine, base, "pids")
                    and _probe(base, {"pids.max": "64"})
                ):
                    pids = Controller(2, base)
        else:
            for name in ("memory", "pids"):
                if name in opts:
                    v1[name] = Path(point + own.get(name, "/").rstrip("/")) / GROUP_DIR
    if (
        memory is None
        and "memory" in v1
        and _probe(v1["memory"], {"memory.limit_in_bytes": str(64 << 20)})
    ):
        memory = Controller(1, v1["memory"])
    if pids is None and "pids" in v1 and _probe(v1["pids"], {"pids.max": "64"}):
        pids = Controller(1, v1["pids"])
    return CgroupLayout(memory=memory, pids=pids, unified=unified)


def _read_counter(path: Path, key: str) -> int:
    """A `key value` line from a cgroup stats file (0 when absent)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def _kill_procs(cgroup: Path) -> int:
    """SIGKILL every process listed in a cgroup; returns how many were found."""
    try:
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


@dataclass(frozen=True)
class Counters:
    oom_kills: int = 0
    pids_refused: int = 0


class SandboxCgroup:
    """The cgroups of one sandbox: created at start, every process killed and removed at end."""

    def __init__(self, layout: CgroupLayout, sandbox_id: str, limits: Limits) -> None:
        self.layout = layout
        self.name = f"{os.getpid()}-{sandbox_id}"
        self.limits = limits
        self.dirs: list[Path] = []

    @property
    def memory(self) -> Path | None:
        return self.layout.memory.base / self.name if self.layout.memory else None

    @property
    def pids(self) -> Path | None:
        return self.layout.pids.base / self.name if self.layout.pids else None

    @property
    def unified(self) -> Path | None:
        return self.layout.unified / self.name if self.layout.unified else None

    def create(self) -> None:
        memory_bytes = str(self.limits.memory_mb << 20)
        for path in {p for p in (self.memory, self.pids, self.unified) if p is not None}:
            path.mkdir(exist_ok=True)
            self.dirs.append(path)
        if self.layout.memory and self.memory:
            if self.layout.memory.version == 2:
                (self.memory / "memory.max").write_text(memory_bytes)
                with contextlib.suppress(OSError):
                    (self.memory / "memory.swap.max").write_text("0")
            else:
                (self.memory / "memory.limit_in_bytes").write_text(memory_bytes)
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (self.memory / "memory.memsw.limit_in_bytes").write_text(memory_bytes)
        if self.layout.pids and self.pids:
            (self.pids / "pids.max").write_text(str(self.limits.pids))

    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a command must join before it runs anything."""
        return [str(p / "cgroup.procs") for p in dict.fromkeys(self.dirs)]

    def counters(self) -> Counters:
        oom = 0
        if self.layout.memory and self.memory:
            stats = "memory.events" if self.layout.memory.version == 2 else "memory.oom_control"
            oom = _read_counter(self.memory / stats, "oom_kill")
        refused = _read_counter(self.pids / "pids.events", "max") if self.pids else 0
        return Counters(oom, refused)

    def kill_all(self) -> None:
        """End every process in the sandbox, also ones racing to fork."""
        if self.unified is not None and (self.unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.unified / "cgroup.kill").write_text("1")
        for path in dict.fromkeys(self.dirs):
            for _ in range(50):
                if _kill_procs(path) == 0:
                    break
                time.sleep(0.01)

    def destroy(self) -> None:
        self.kill_all()
        for path in dict.fromkeys(reversed(self.dirs)):
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    _kill_procs(path)
                    time.sleep(0.02)
        self.dirs.clear()


def release_stale_cgroups(layout: CgroupLayout) -> int:
    """Remove sandbox cgroups whose server process is gone; returns how many."""
    count = 0
    bases = {c.base for c in (layout.memory, layout.pids) if c} | (
        {layout.unified} if layout.unified else set()
    )
    for base in bases:
        with contextlib.suppress(OSError):
            for child in base.iterdir():
                owner = child.name.split("-", 1)[0]
                if not child.is_dir() or not owner.isdigit() or pid_alive(int(owner)):
                    continue
                if (child / "cgroup.kill").exists():
                    with contextlib.suppress(OSError):
                        (child / "cgroup.kill").write_text("1")
                for _ in range(50):
                    if _kill_procs(child) == 0:
                        break
                    time.sleep(0.01)
                with contextlib.suppress(OSError):
                    child.rmdir()
                    count += 1
    return count


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def userns_available() -> bool:
    """Whether user namespaces can be made here (the per-command `RLIMIT_NPROC` fallback)."""
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return False


def rlimit_script(limits: Limits, layout: CgroupLayout) -> list[str]:
    """`ulimit` lines (dash syntax) set on the host before the sandbox starts."""
    lines = [
        "ulimit -c 0",
        f"ulimit -S -t {limits.cpu_seconds}",
        f"ulimit -H -t {limits.cpu_seconds + CPU_GRACE_S}",
    ]
    if layout.memory is None:
        lines.append(f"ulimit -v {limits.memory_mb * 1024}")
    return lines


def join_and_exec(
    procs_files: list[str], ulimits: list[str], argv: list[str], inputs: Sequence[str] = ()
) -> list[str]:
    """argv of a /bin/sh that joins the cgroups, sets rlimits, opens `inputs` for reading as
    descriptors 3, 4, ... (bwrap's `--args 3`), then execs `argv`.

    Joining happens before the sandbox exists, so every process the command ever forks is
    born inside the sandbox's cgroups.
    """
    n = len(procs_files)
    script = [f'echo $$ > "${{{i}}}" || exit 125' for i in range(1, n + 1)]
    script += [f'exec {3 + i}< "${{{n + 1 + i}}}" || exit 125' for i in range(len(inputs))]
    script += [f"{line} || exit 125" for line in ulimits]
    script += [f"shift {n + len(inputs)}", 'exec "$@"']
    return ["/bin/sh", "-c", "\n".join(script), "nightshift-exec", *procs_files, *inputs, *argv]
