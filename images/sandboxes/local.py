"""Local sandboxes: an overlay workspace per sandbox, run under bubblewrap (`bwrap.py`) or
gVisor (`gvisor.py`); this module holds the lifecycle both share, and `environment.py` what
the sandbox is given (its /etc, environment and uid).

What a command sees: the host's /usr (read-only) and a few harmless /etc files, its workspace
at /workspace and home at /home/agent (both on the sandbox's overlay), a private /tmp, /proc
and a minimal /dev. No network (an allowlisting proxy when the repo asks for egress), no host
processes, no data dir, no other sandbox. When the host process is root, commands run as an
unprivileged host uid (65534 unless configured), so even a namespace escape lands without
privileges. Limits: see `limits.py`; each command is its own process tree that ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from images.sandboxes import snapshots
from images.sandboxes.base import (
    WORKDIR,
    ExecResult,
    FileEntry,
    SandboxError,
    SandboxSpec,
    SnapshotRef,
    UnsupportedSetting,
)
from images.sandboxes.egress import DEFAULT_PORTS, EgressProxy
from images.sandboxes.environment import (
    BRIDGE_COMMAND,
    SANDBOX_PYTHON,
    SANDBOX_UID,
    build_etc,
    host_env,
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
from images.sandboxes.overlay import Workspace
from images.sandboxes.pathsafe import ConfinedTree, clean_relative
from images.sandboxes.process import name_limit, run_process

LAYOUT_VERSION = "ns1"
MAX_LAYERS = 8


class LocalSandbox:
    """One sandbox's directories, limits and proxy; subclasses say how a command runs."""

    backend: str = "local"

    def __init__(
        self, owner_backend: LocalBackend, spec: SandboxSpec, sandbox_dir: Path, lowers: list[Path]
    ) -> None:
        self.id = sandbox_dir.name
        self.source = spec.source
        self.spec = spec
        self.limits = spec.limits
        self._backend = owner_backend
        self.dir = sandbox_dir
        self.owner = owner_backend.owner
        self.ws = Workspace(sandbox_dir / "fs", lowers, self.owner, owner_backend.state_dir)
        self.tmp = sandbox_dir / "tmp"
        self.etc = owner_backend.etc_dir
        self.egress_dir = sandbox_dir / "egress"
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
        self.tmp.mkdir(mode=0o1777)
        os.chmod(self.tmp, 0o1777)  # noqa: S103  (the sandbox's own /tmp, sticky)
        if self.owner is not None:
            os.chown(self.tmp, *self.owner)
        self.setup_cgroup()
        if self.spec.egress:
            self.egress_dir.mkdir(mode=0o755)
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
        return sandbox_env(self.spec.env, bool(self.spec.egress), env)

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
        """Make sure the runtime can take a command (gVisor restarts a container killed for
        memory here)."""

    def interpret(
        self, result: ExecResult, before: Counters, after: Counters, by_deadline: bool
    ) -> ExecResult:
        """Name the limit that ended the command, from its exit and the cgroup counters."""
        return name_limit(result, before, after, by_deadline)

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
        # A copy may be large; it gets the time a fast disk needs for it, and a floor.
        timeout = 60.0 + max_bytes / (20 * 1024 * 1024)
        return await self.file_workers.run(
            path, self.files.copy_out, path, str(dest), max_bytes, timeout=timeout
        )

    def _check_live(self) -> None:
        if self.terminated:
            raise SandboxError(f"sandbox {self.id} has been terminated")

    async def snapshot(self) -> SnapshotRef:
        self._check_live()
        return await asyncio.to_thread(self._backend.capture, self)

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

    @property
    def cgroups(self) -> CgroupLayout:
        if self._cgroups is None:
            self._cgroups = detect() if os.geteuid() == 0 else NO_CGROUPS
            release_stale_cgroups(self._cgroups)
        return self._cgroups

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

    def refuse_unenforceable(self, spec: SandboxSpec) -> None:
        """Raise UnsupportedSetting for a limit or policy this host cannot enforce."""
        if spec.egress and not Path(SANDBOX_PYTHON).exists():
            raise UnsupportedSetting(
                f"egress needs {SANDBOX_PYTHON} inside the sandbox for its loopback bridge; "
                "refusing the allowlist rather than ignoring it"
            )

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        self.check_available()
        lowers = snapshots.lowers(spec.source, backend=self.name, runtime=self.runtime_version())
        self.refuse_unenforceable(spec)
        sandbox_id = f"sb-{os.getpid()}-{secrets.token_hex(6)}"
        sandbox = self.sandbox_class(self, spec, self.state_dir / "sandboxes" / sandbox_id, lowers)
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
        )

    def collect_snapshots(self, older_than_s: float, keep: Collection[str] = ()) -> list[str]:
        in_use = {s.source.id for s in self.live.values() if isinstance(s.source, SnapshotRef)}
        return snapshots.collect(self.state_dir, older_than_s, keep, in_use)
