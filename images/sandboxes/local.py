"""Local sandboxes: an overlay workspace per sandbox, run under bubblewrap (`bwrap.py`) or
gVisor (`gvisor.py`); this module holds the lifecycle both share, and `environment.py` what
the sandbox is given (its /etc, environment and uid).

What a command sees: the host's /usr (read-only) and a few harmless /etc files, or the root
of the image the repo declares (`environment.image_environment`, the lowest overlay layer),
its workspace and home (on the sandbox's overlay), a private /tmp, /proc and a minimal /dev.
No network (an allowlisting proxy when the repo asks for egress), no host processes, no data
dir, no other sandbox. When the host process is root, commands run as an unprivileged host
uid of their own (65600 unless configured; `environment.check_sandbox_uid`), so even a
namespace escape lands without privileges. Everything a sandbox writes lands on its own disk
(`disk.py`: bytes and inodes capped, mounted nosuid,nodev). Limits: see `limits.py`; each
command is its own process tree that ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from images.sandboxes import disk, snapshots
from images.sandboxes.base import (
    WORKDIR,
    ExecResult,
    FileEntry,
    Limits,
    SandboxError,
    SandboxSpec,
    SnapshotRef,
    UnsupportedSetting,
)
from images.sandboxes.disk import MIN_DISK_MB, DiskSpec
from images.sandboxes.egress import DEFAULT_PORTS, EgressProxy
from images.sandboxes.environment import (
    BRIDGE_COMMAND,
    BRIDGE_SOURCE,
    SANDBOX_UID,
    ImageEnvironment,
    build_etc,
    check_sandbox_uid,
    environment_lowers,
    host_env,
    image_environment,
    refuse_for_environment,
    sandbox_env,
)
from images.sandboxes.limits import (
    NO_CGROUPS,
    CgroupLayout,
    Counters,
    SandboxCgroup,
    detect,
    release_stale_cgroups,
)
from images.sandboxes.offload import FileWorkers
from images.sandboxes.overlay import Workspace, overlay_supported, release_stale_mounts
from images.sandboxes.pathsafe import ConfinedTree, clean_relative
from images.sandboxes.process import name_limit, run_process

log = logging.getLogger(__name__)
LAYOUT_VERSION = "ns1"
MAX_LAYERS = 8


class LocalSandbox:
    """One sandbox's directories, limits and proxy; subclasses say how a command runs."""

    backend: str = "local"

    def __init__(
        self,
        owner_backend: LocalBackend,
        spec: SandboxSpec,
        sandbox_dir: Path,
        lowers: list[Path],
        disk_template: Path | None = None,
        environment: ImageEnvironment | None = None,
    ) -> None:
        self.id = sandbox_dir.name
        self.environment = environment
        self.source = spec.source
        self.spec = spec
        self.limits = spec.limits
        self._backend = owner_backend
        self.dir = sandbox_dir
        self.owner = owner_backend.owner
        self.ws = Workspace(
            sandbox_dir / "fs", lowers, self.owner, owner_backend.state_dir, disk_template
        )
        self.tmp = self.ws.tmp
        self.etc = self.ws.etc or owner_backend.etc_dir
        self.egress_dir = self.ws.egress
        self.bridge = self.ws.bridge or BRIDGE_SOURCE
        self.cgroup = SandboxCgroup(owner_backend.cgroups, self.id, spec.limits)
        self.deadline = time.monotonic() + spec.limits.sandbox_timeout_s
        self.terminated = False
        self._tasks: set[asyncio.Task[ExecResult]] = set()
        self.files = ConfinedTree(str(self.ws.merged / "workspace"), self.owner)
        self.file_workers = FileWorkers(self.id)

    @property
    def uid(self) -> int:
        return (self.owner or (SANDBOX_UID, SANDBOX_UID))[0]

    def create(self) -> None:
        self.dir.mkdir(parents=True)
        self.ws.create()
        for sub in ("workspace", "home"):
            (self.ws.merged / sub).mkdir(exist_ok=True)
        self.setup_cgroup()
        if self.spec.egress:
            self._backend.egress.open(self.id, self.egress_dir / "proxy.sock", self.spec.egress)

    def setup_cgroup(self) -> None:
        self.cgroup.create()

    async def boot(self) -> None:
        """Bring up whatever runs between commands (nothing under bubblewrap)."""

    def command(self, argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[str]:
        """The host argv that runs `argv` inside the sandbox."""
        raise NotImplementedError

    def inner(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped in what must run inside the sandbox, nearest the command first."""
        return [*BRIDGE_COMMAND, "--", *argv] if self.spec.egress else list(argv)

    async def on_timeout(self, pid: int) -> None:
        """Kill a timed-out command; the process group is killed after this in any case."""

    def env_for(self, env: Mapping[str, str] | None) -> dict[str, str]:
        image = self.environment.env if self.environment is not None else None
        return sandbox_env(self.spec.env, bool(self.spec.egress), env, image)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        output_cap: int | None = None,
        stdin: bytes | None = None,
    ) -> ExecResult:
        if self.terminated:
            raise SandboxError(f"sandbox {self.id} has been terminated")
        if not argv:
            raise SandboxError("exec needs a command")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise SandboxError(
                f"sandbox {self.id} reached its lifetime of {self.limits.sandbox_timeout_s:g} s; "
                "start a new one"
            )
        rel = clean_relative(cwd or ".")
        inside_cwd = WORKDIR if rel == "." else f"{WORKDIR}/{rel}"
        requested = timeout or self.limits.exec_timeout_s
        await self.ready()
        before = self.cgroup.counters()
        task = asyncio.ensure_future(
            self._run(argv, inside_cwd, env, min(requested, remaining), output_cap, stdin)
        )
        self._tasks.add(task)
        try:
            result = await task
        finally:
            self._tasks.discard(task)
        return self.interpret(result, before, self.cgroup.counters(), remaining < requested)

    async def _run(
        self,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None,
        timeout: float,
        output_cap: int | None,
        stdin: bytes | None,
    ) -> ExecResult:
        return await run_process(
            self.command(argv, cwd, self.env_for(env)),
            env=host_env(),
            timeout=timeout,
            output_cap=output_cap or self.limits.output_cap_bytes,
            stdin=stdin,
            on_timeout=self.on_timeout,
        )

    async def ready(self) -> None:
        """Make sure the runtime can take a command (gVisor restarts one killed for memory)."""

    async def share_network(self) -> None:  # gVisor's commands share its container's network
        return None

    def interpret(self, result: ExecResult, b: Counters, a: Counters, late: bool) -> ExecResult:
        """Name the limit that ended the command, from its exit and the cgroup counters."""
        return name_limit(result, b, a, late)

    async def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        self._check_live()
        return await self.file_workers.run(path, self.files.read, path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        self._check_live()
        await self.file_workers.run(path, self.files.write, path, data)

    async def list_files(
        self, path: str = ".", recursive: bool = False, limit: int = 2000
    ) -> list[FileEntry]:
        self._check_live()
        return await self.file_workers.run(path, self.files.listdir, path, recursive, limit)

    async def copy_out(self, path: str, dest: Path, max_bytes: int) -> int:
        self._check_live()
        timeout = 60.0 + max_bytes / (20 * 1024 * 1024)  # what a fast disk needs, and a floor
        run = self.file_workers.run
        return await run(path, self.files.copy_out, path, str(dest), max_bytes, timeout=timeout)

    def _check_live(self) -> None:
        if self.terminated:
            raise SandboxError(f"sandbox {self.id} has been terminated")

    async def snapshot(self) -> SnapshotRef:
        self._check_live()
        return await asyncio.to_thread(self._backend.capture, self)

    def egress_refusals(self) -> list[str]:
        refused = self._backend.egress.refusals(self.id) if self.spec.egress else []
        return [f"{d.host}:{d.port}: {d.reason}" for d in refused]

    async def terminate(self) -> None:
        if self.terminated:
            return
        self.terminated = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.shutdown()
        await asyncio.to_thread(self.destroy)

    async def shutdown(self) -> None:
        """Stop the runtime (gVisor's container); called before the files go."""

    def destroy(self) -> None:
        self.cgroup.destroy()
        if self.spec.egress:
            self._backend.egress.close(self.id)
        self.ws.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._backend.forget(self.id)


class LocalBackend:
    """What bubblewrap and gVisor share: state dirs, overlays, limits, egress, snapshots."""

    name = "local"
    sandbox_class: ClassVar[type[LocalSandbox]] = LocalSandbox

    def __init__(
        self,
        state_dir: Path,
        owner: tuple[int, int] | None = None,
        *,
        cgroups: CgroupLayout | None = None,
        egress: EgressProxy | None = None,
        egress_ports: Collection[int] | None = DEFAULT_PORTS,
        max_layers: int = MAX_LAYERS,
    ) -> None:
        self.state_dir = state_dir
        self.owner = owner
        self.live: dict[str, LocalSandbox] = {}
        self.max_layers = max_layers
        self._cgroups = cgroups
        self._egress = egress
        self._egress_ports = egress_ports
        self._etc: Path | None = None
        self._templates: dict[tuple[int, int], Path] = {}
        self._template_lock = threading.Lock()
        self._owner_checked = False

    @property
    def cgroups(self) -> CgroupLayout:
        if self._cgroups is None:
            self._cgroups = detect() if os.geteuid() == 0 else NO_CGROUPS
            release_stale_cgroups(self._cgroups)
        return self._cgroups

    def enforcement(self) -> dict[str, str]:
        return self.cgroups.describe()

    @property
    def etc_dir(self) -> Path:
        if self._etc is None:
            self._etc = build_etc(self.state_dir, self.name, self.owner, self.etc_extra())
        return self._etc

    def etc_extra(self) -> dict[str, str]:
        """Files of the sandbox's /etc beyond the common ones."""
        return {}

    @property
    def egress(self) -> EgressProxy:
        if self._egress is None:
            self._egress = EgressProxy(ports=self._egress_ports)
        return self._egress

    def runtime_version(self) -> str:
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise SandboxUnavailable, naming the fix, when this backend cannot run here."""
        if self.owner is not None and not self._owner_checked:
            check_sandbox_uid(*self.owner)
            self._owner_checked = True

    def disk_template(self, limits: Limits) -> Path | None:
        """The disk image sandboxes with `limits` start from (None: no disk quota)."""
        if limits.disk_mb <= 0:
            return None
        key = (limits.disk_mb, limits.disk_inodes)
        with self._template_lock:
            if key not in self._templates:
                spec = DiskSpec(limits.disk_mb, limits.disk_inodes, self.owner)
                self._templates[key] = disk.template(
                    self.state_dir / "disks", spec, self.etc_dir, {"bridge.py": BRIDGE_SOURCE}
                )
            return self._templates[key]

    def refuse_unenforceable(self, spec: SandboxSpec) -> None:
        """Raise UnsupportedSetting for a limit or policy this host cannot enforce."""
        if spec.limits.disk_mb > 0 and not overlay_supported(str(self.state_dir)):
            raise UnsupportedSetting(
                "the sandbox disk quota needs root (a loop-mounted disk per sandbox under an "
                "overlay); run as root or set NIGHTSHIFT_SANDBOX_DISK_MB=0 to go without one"
            )
        if spec.limits.disk_mb and spec.limits.disk_mb < MIN_DISK_MB:
            raise UnsupportedSetting(f"a sandbox disk needs at least {MIN_DISK_MB} MB")
        refuse_for_environment(spec, image_environment(spec.source))

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        self.check_available()
        lowers = snapshots.lowers(spec.source, backend=self.name, runtime=self.runtime_version())
        self.refuse_unenforceable(spec)
        lowers, environment = environment_lowers(self.state_dir, spec.source, lowers, self.owner)
        sandbox_id = f"sb-{os.getpid()}-{secrets.token_hex(6)}"
        template = self._templates.get((spec.limits.disk_mb, spec.limits.disk_inodes))
        if template is None:  # the first sandbox of its size formats the template (mkfs)
            template = await asyncio.to_thread(self.disk_template, spec.limits)
        where = self.state_dir / "sandboxes" / sandbox_id
        sandbox = self.sandbox_class(self, spec, where, lowers, template, environment)
        try:
            await asyncio.to_thread(sandbox.create)
            await sandbox.boot()
        except BaseException:
            sandbox.terminated = True
            with contextlib.suppress(Exception):
                await sandbox.shutdown()
            await asyncio.to_thread(sandbox.destroy)
            raise
        self.live[sandbox_id] = sandbox
        return sandbox

    def forget(self, sandbox_id: str) -> None:
        self.live.pop(sandbox_id, None)

    def capture(self, sandbox: LocalSandbox) -> SnapshotRef:
        """Copy what the sandbox changed into a new snapshot layer."""
        return snapshots.capture(
            self.state_dir,
            backend=self.name,
            runtime=self.runtime_version(),
            source=sandbox.source,
            changes=sandbox.ws.changes_dir(),
            overlay=sandbox.ws.overlay,
            max_layers=self.max_layers,
            max_bytes=sandbox.limits.disk_mb << 20 if sandbox.ws.template is not None else None,
        )

    def release_stale(self) -> int:
        """Unmount and remove the sandboxes of processes that have exited (a worker killed
        mid-session); returns how many mounts went. Those of live processes, this one
        included, are spared. Run periodically (`app.wiring.STALE_SWEEP_INTERVAL_S`)."""
        live = set(self.live)
        released = release_stale_mounts(self.state_dir / "sandboxes", live, spare_own=True)
        if released:
            log.info("released %d sandbox mounts left by processes that have exited", released)
        return released

    def collect_snapshots(self, older_than_s: float, keep: Collection[str] = ()) -> list[str]:
        in_use = {s.source.id for s in self.live.values() if isinstance(s.source, SnapshotRef)}
        return snapshots.collect(self.state_dir, older_than_s, keep, in_use)
