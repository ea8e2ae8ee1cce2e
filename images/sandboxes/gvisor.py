"""The gVisor backend: one `runsc` container per sandbox, one `runsc exec` per command.

The container (its OCI spec: `gvisor_bundle.py`) sees the same tree as under bubblewrap
(read-only /usr and /etc files, the overlay workspace and home, a private /tmp) served by
gVisor's gofer, with no network (`--network=none`). Its kernel is gVisor's: no syscall of the
sandboxed code reaches the host.

Each command runs under `nsexec` (built by `gvisor_helpers.py`): a PID namespace of its own
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
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from images.sandboxes.base import (
    ExecResult,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    UnsupportedSetting,
)
from images.sandboxes.egress import DEFAULT_PORTS, EgressProxy
from images.sandboxes.environment import ImageEnvironment, host_env, runs_on_image
from images.sandboxes.gvisor_bundle import (
    SHIM_PATH,
    bundle_config,
    cpuacct_base,
    exec_process,
    runsc_layout,
)
from images.sandboxes.gvisor_helpers import (
    build_helpers,
    release_stale_containers,
    runsc_version,
    static_helper,
)
from images.sandboxes.limits import Counters
from images.sandboxes.local import LAYOUT_VERSION, MAX_LAYERS, LocalBackend, LocalSandbox
from images.sandboxes.process import XCPU_EXIT, run_process

CPU_POLL_S = 0.5


class GvisorSandbox(LocalSandbox):
    backend = "gvisor"

    def __init__(
        self,
        owner_backend: LocalBackend,
        spec: SandboxSpec,
        sandbox_dir: Path,
        lowers: list[Path],
        disk_template: Path | None = None,
        environment: ImageEnvironment | None = None,
    ) -> None:
        super().__init__(owner_backend, spec, sandbox_dir, lowers, disk_template, environment)
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
        return bundle_config(
            etc=self.etc,
            tmp=self.tmp,
            workspace=self.ws.merged / "workspace",
            home=self.ws.merged / "home",
            nsexec=self.gv.static_nsexec if self.environment is not None else self.gv.nsexec,
            shim=self.gv.shim,
            egress=(self.egress_dir, self.ready_dir) if self.spec.egress else None,
            limits=self.limits,
            cgroup_name=self.cgroup.name,
            image=self.image_tops(),
        )

    def image_tops(self) -> tuple[Path, list[str]] | None:
        """The overlay's root and the image's top-level directories (None: host tools)."""
        if self.environment is None:
            return None
        names = [name for name, target in self.environment.tops() if target is None]
        return self.ws.merged, names

    def create(self) -> None:
        super().create()
        (self.bundle / "rootfs").mkdir(parents=True)
        for name, target in self.environment.tops() if self.environment is not None else []:
            if target is not None:  # the image's symlinks (`/bin -> usr/bin`) in the empty root
                (self.bundle / "rootfs" / name).symlink_to(target)
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
        owner = self.owner or (self.uid, self.uid)
        host_view = self.environment is not None and not runs_on_image(self.environment, argv)
        process = exec_process(
            argv, cwd=cwd, env=env, owner=owner, limits=self.limits, host_view=host_view
        )
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
            self._cpuacct = cpuacct_base()
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

    @cached_property
    def static_nsexec(self) -> Path:
        """`nsexec` linked statically, for sandboxes on a declared image."""
        return static_helper(self.state_dir, "nsexec")

    @property
    def shim(self) -> Path | None:
        self._build()
        return self._shim

    def _build(self) -> None:
        if self._built:
            return
        self._nsexec, self._shim = build_helpers(self.state_dir)
        self._built = True

    def check_available(self) -> None:
        super().check_available()
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
            release_stale_containers(self.runsc_root)

    def release_stale(self) -> int:
        # Containers first: a dead server's runsc keeps its mounts alive until deleted.
        if self.runsc_root.is_dir():
            release_stale_containers(self.runsc_root)
        return super().release_stale()

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
