"""The gVisor backend: one `runsc` container per sandbox, one `runsc exec` per command.

The container sees the same tree as under bubblewrap (read-only /usr and /etc files, the
overlay workspace and home, a private /tmp) served by gVisor's gofer, with no network
(`--network=none`). Its kernel is gVisor's: no syscall of the sandboxed code reaches the host.

Each command runs under `nsexec` (built here, see `NSEXEC_C`): a PID namespace of its own
whose init reaps and reports the exit as 128+N for a signal, everything left behind dies with
it, and the command runs as the unprivileged uid with no capabilities.

What Debian's runsc 20221219 does not do, and how this backend copes (README, Sandboxes):
- `statx`/`fstatat` with `AT_NO_AUTOMOUNT` fail with EINVAL, which breaks coreutils `ls -l`
  and `stat`; a preloaded shim (`STATX_SHIM_C`) clears the flag (a no-op for stat since
  Linux 4.14).
- Resource limits in the OCI spec reach `runsc exec` processes unreliably, so `nsexec` sets
  RLIMIT_NPROC and RLIMIT_CPU itself. gVisor arms the CPU-time limit only in the process
  that called setrlimit, so the command's whole tree is also held to it from the host: the
  container's cpuacct cgroup is read while the command runs.
- Memory is limited for the container as a whole by its cgroup: past it the host kills the
  container, the command reports 137 and the next command boots a fresh container over the
  same files (processes are per command anyway).
- The processes limit is RLIMIT_NPROC of the sandbox uid, which gVisor counts in the
  sandbox's own kernel, so it is per sandbox; the host pids cgroup is only a backstop.
- The KVM platform hangs on this kind of host; ptrace is the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from images.sandboxes.base import (
    HOME,
    WORKDIR,
    ExecResult,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    UnsupportedSetting,
)
from images.sandboxes.egress import DEFAULT_PORTS, PROXY_PORT, EgressProxy
from images.sandboxes.gvisor_helpers import NSEXEC_C, STATX_SHIM_C, helper, runsc_version
from images.sandboxes.limits import (
    CGROUP_ROOT,
    CgroupLayout,
    Controller,
    Counters,
    mounts,
    pid_alive,
)
from images.sandboxes.local import (
    BRIDGE_PATH,
    BRIDGE_SOURCE,
    EGRESS_DIR,
    EGRESS_SOCKET,
    LAYOUT_VERSION,
    MAX_LAYERS,
    RUN_DIR,
    SANDBOX_PYTHON,
    LocalBackend,
    LocalSandbox,
    host_env,
)
from images.sandboxes.process import XCPU_EXIT, run_process

GROUP_DIR = "nightshift-gvisor"
MEMORY_OVERHEAD_MB = 64  # the sentry's own memory, inside the container's cgroup
# Host tasks (threads and ptrace stubs) the sentry needs: ~170 idle, several per process.
HOST_TASKS_BASE = 512
HOST_TASKS_PER_PROCESS = 16
NSEXEC_PATH = f"{RUN_DIR}/nsexec"
SHIM_PATH = f"{RUN_DIR}/statx-shim.so"
READY_DIR = f"{RUN_DIR}/state"
SHIM_FIXED_IN = 20230101
CPU_POLL_S = 0.5  # runsc releases from here on accept AT_NO_AUTOMOUNT
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


class GvisorSandbox(LocalSandbox):
    backend = "gvisor"

    def __init__(
        self, owner_backend: LocalBackend, spec: SandboxSpec, sandbox_dir: Path, lowers: list[Path]
    ) -> None:
        super().__init__(owner_backend, spec, sandbox_dir, lowers)
        self.cgroup.layout = runsc_layout()
        self.cid = self.cgroup.name
        self.bundle = self.dir / "bundle"
        self.ready_dir = self.dir / "ready"
        self.alive = False
        self._execs = 0
        self._boot_lock = asyncio.Lock()

    @property
    def gv(self) -> GvisorBackend:
        assert isinstance(self._backend, GvisorBackend)
        return self._backend

    def runsc(self, *args: str) -> list[str]:
        flags = [
            "runsc",
            f"--root={self.gv.runsc_root}",
            "--network=none",
            f"--platform={self.gv.platform}",
        ]
        if self.spec.egress:
            flags.append("--host-uds=open")  # to reach the proxy socket bound in
        return [*flags, *args]

    def setup_cgroup(self) -> None:
        """runsc creates and removes the container's cgroups itself (see `config`)."""

    def config(self) -> dict[str, object]:
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
        mounts.append(
            {"destination": "/etc", "type": "bind", "source": str(self.etc), "options": ro}
        )
        binds = [
            ("/tmp", self.tmp, rw),  # noqa: S108
            (WORKDIR, self.ws.merged / "workspace", rw),
            (HOME, self.ws.merged / "home", rw),
            (NSEXEC_PATH, self.gv.nsexec, ro),
        ]
        if self.gv.shim is not None:
            binds.append((SHIM_PATH, self.gv.shim, ro))
        if self.spec.egress:
            binds += [
                (BRIDGE_PATH, BRIDGE_SOURCE, ro),
                (EGRESS_DIR, self.egress_dir, ro),
                (READY_DIR, self.ready_dir, rw),
            ]
        for dest, src, opts in binds:
            mounts.append(
                {"destination": dest, "type": "bind", "source": str(src), "options": opts}
            )
        if self.spec.egress:
            # The bridge is the container's init, as root inside gVisor: the agent's uid
            # cannot signal it.
            init = [
                SANDBOX_PYTHON,
                "-I",
                "-S",
                BRIDGE_PATH,
                str(PROXY_PORT),
                EGRESS_SOCKET,
                "--ready",
                f"{READY_DIR}/ready",
            ]
        else:
            init = ["/bin/sleep", "infinity"]
        limits = self.limits
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
                "capabilities": {
                    k: [] for k in ("bounding", "effective", "permitted", "inheritable")
                },
                "rlimits": rlimits,
                "noNewPrivileges": True,
            },
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                "cgroupsPath": f"/{GROUP_DIR}/{self.cgroup.name}",
                "resources": {
                    "memory": {
                        "limit": (limits.memory_mb + MEMORY_OVERHEAD_MB) << 20,
                        "swap": (limits.memory_mb + MEMORY_OVERHEAD_MB) << 20,
                    },
                    "pids": {"limit": limits.pids * HOST_TASKS_PER_PROCESS + HOST_TASKS_BASE},
                },
            },
        }

    def create(self) -> None:
        super().create()
        (self.bundle / "rootfs").mkdir(parents=True)
        self.ready_dir.mkdir()
        config = self.config()
        (self.bundle / "config.json").write_text(json.dumps(config))

    async def boot(self) -> None:
        async with self._boot_lock:
            await self._boot()

    async def _boot(self) -> None:
        log = self.dir / "runsc.log"
        with contextlib.suppress(FileNotFoundError):
            (self.ready_dir / "ready").unlink()
        with open(log, "wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *self.runsc("run", "--detach", f"--bundle={self.bundle}", self.cid),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
            code = await proc.wait()
        if code != 0:
            detail = log.read_text(errors="replace").strip()[-2000:]
            raise SandboxError(f"runsc could not start sandbox {self.id}: {detail}")
        self.alive = True
        if self.spec.egress:
            deadline = time.monotonic() + 15
            while not (self.ready_dir / "ready").exists():
                if time.monotonic() > deadline:
                    raise SandboxError(f"the egress bridge of sandbox {self.id} did not start")
                await asyncio.sleep(0.005)

    async def ready(self) -> None:
        if not self.alive:
            async with self._boot_lock:
                if not self.alive:
                    await self._delete()
                    await self._boot()

    def inner(self, argv: Sequence[str]) -> list[str]:
        return list(argv)  # egress is one bridge per container (its init), not per command

    def command(self, argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[str]:
        self._execs += 1
        return self._exec_argv(self._execs, argv, cwd, env)

    def _exec_argv(
        self, n: int, argv: Sequence[str], cwd: str, env: Mapping[str, str]
    ) -> list[str]:
        uid, gid = self.owner or (self.uid, self.uid)
        process = {
            "user": {"uid": 0, "gid": 0},
            "args": [
                NSEXEC_PATH,
                str(uid),
                str(gid),
                str(self.limits.pids),
                str(self.limits.cpu_seconds),
                *argv,
            ],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "capabilities": {k: EXEC_CAPS for k in ("bounding", "effective", "permitted")},
        }
        spec = self.dir / f"exec-{n}.json"
        spec.write_text(json.dumps(process))
        pid_file = self.dir / f"exec-{n}.pid"
        return self.runsc("exec", f"--process={spec}", f"--internal-pid-file={pid_file}", self.cid)

    async def _kill_exec(self, n: int) -> None:
        """Kill command `n`'s nsexec inside the container; its namespace dies with it."""
        with contextlib.suppress(OSError, ValueError):
            inner = int((self.dir / f"exec-{n}.pid").read_text().strip())
            proc = await asyncio.create_subprocess_exec(
                *self.runsc("kill", f"--pid={inner}", self.cid, "KILL"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()

    async def _run(
        self,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None,
        timeout: float,
        output_cap: int | None,
        stdin: bytes | None,
    ) -> ExecResult:
        self._execs += 1
        n = self._execs

        async def kill(_pid: int) -> None:
            await self._kill_exec(n)

        watch = asyncio.ensure_future(self._watch_cpu(n))
        try:
            result = await run_process(
                self._exec_argv(n, argv, cwd, self.env_for(env)),
                env=host_env(),
                timeout=timeout,
                output_cap=output_cap or self.limits.output_cap_bytes,
                stdin=stdin,
                on_timeout=kill,
            )
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            for suffix in ("json", "pid"):
                with contextlib.suppress(OSError):
                    (self.dir / f"exec-{n}.{suffix}").unlink()
        if result.exit_code == 128 and "containerManager" in result.stderr:
            self.alive = False  # the container died under the command
        if watch.done() and not watch.cancelled() and watch.result() and not result.timed_out:
            return replace(result, exit_code=XCPU_EXIT)
        return result

    async def _watch_cpu(self, n: int) -> bool:
        """Kill command `n` once the container has spent the CPU-time limit while it ran.

        gVisor arms RLIMIT_CPU only in the process that set it (nsexec does, for the command
        itself), so what the command forks is held to the limit here, from the container's
        cpuacct cgroup: CPU of the whole sandbox during the command, gVisor's own included.
        """
        usage = self.gv.cpu_usage_ns(self.cgroup.name)
        if usage is None:
            return False
        limit_ns = self.limits.cpu_seconds * 1_000_000_000
        while True:
            await asyncio.sleep(CPU_POLL_S)
            now = self.gv.cpu_usage_ns(self.cgroup.name)
            if now is not None and now - usage > limit_ns:
                await self._kill_exec(n)
                return True

    def interpret(
        self, result: ExecResult, before: Counters, after: Counters, by_deadline: bool
    ) -> ExecResult:
        if after.oom_kills > before.oom_kills:
            # The host killed the whole container for memory; the next command boots anew.
            self.alive = False
            result = replace(result, exit_code=137)
        return super().interpret(result, before, after, by_deadline)

    async def _delete(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.runsc("delete", "--force", self.cid),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()
        self.alive = False

    async def shutdown(self) -> None:
        await self._delete()


class GvisorBackend(LocalBackend):
    """Sandboxes under gVisor's runsc; needs root on this host."""

    name = "gvisor"
    sandbox_class = GvisorSandbox

    def __init__(
        self,
        state_dir: Path,
        owner: tuple[int, int] | None = None,
        *,
        platform: str = "ptrace",
        egress: EgressProxy | None = None,
        egress_ports: Collection[int] | None = DEFAULT_PORTS,
        max_layers: int = MAX_LAYERS,
    ) -> None:
        super().__init__(
            state_dir, owner, egress=egress, egress_ports=egress_ports, max_layers=max_layers
        )
        self.platform = platform
        self._stale_checked = False
        self._cpuacct: Path | None = None
        self.runsc_root = state_dir / "gvisor" / "runsc"
        self._nsexec: Path | None = None
        self._shim: Path | None = None
        self._built = False

    def cpu_usage_ns(self, name: str) -> int | None:
        """CPU time the container `name` has used (its cpuacct cgroup), or None."""
        if self._cpuacct is None:
            for point, fstype, opts in mounts():
                if fstype == "cgroup" and "cpuacct" in opts:
                    self._cpuacct = Path(point) / GROUP_DIR
            if self._cpuacct is None:
                return None
        try:
            return int((self._cpuacct / name / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return None

    def runtime_version(self) -> str:
        try:
            version = runsc_version()[0]
        except SandboxUnavailable:
            version = "missing"
        return f"runsc-{version}/{LAYOUT_VERSION}"

    @property
    def nsexec(self) -> Path:
        self._build()
        assert self._nsexec is not None
        return self._nsexec

    @property
    def shim(self) -> Path | None:
        self._build()
        return self._shim

    def _build(self) -> None:
        if self._built:
            return
        self._nsexec = helper(self.state_dir, NSEXEC_C, "nsexec", shared=False)
        if runsc_version()[1] < SHIM_FIXED_IN:
            self._shim = helper(self.state_dir, STATX_SHIM_C, "statx-shim", shared=True)
        self._built = True

    def check_available(self) -> None:
        runsc_version()
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "the gVisor backend needs root on this host (runsc 20221219 cannot set up "
                "its gofer and cgroups rootless); use NIGHTSHIFT_SANDBOX=bwrap"
            )
        self.runsc_root.mkdir(parents=True, exist_ok=True)
        self._build()
        if not self._stale_checked:
            self._stale_checked = True
            self.release_stale()

    def release_stale(self) -> int:
        """Delete containers whose server process is gone (a crash leaves them running)."""
        listing = subprocess.run(
            ["runsc", f"--root={self.runsc_root}", "list", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        count = 0
        for cid in listing.stdout.split():
            owner = cid.split("-", 1)[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                subprocess.run(
                    ["runsc", f"--root={self.runsc_root}", "delete", "--force", cid],
                    capture_output=True,
                    check=False,
                )
                count += 1
        return count

    def etc_extra(self) -> dict[str, str]:
        return {"ld.so.preload": f"{SHIM_PATH}\n"} if self.shim is not None else {}

    def refuse_unenforceable(self, spec: SandboxSpec) -> None:
        super().refuse_unenforceable(spec)
        layout = runsc_layout()
        if layout.memory is None:
            raise UnsupportedSetting(
                "no memory cgroup hierarchy for runsc on this host: the memory limit cannot "
                "be enforced"
            )
