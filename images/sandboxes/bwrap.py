"""The bubblewrap backend: each command is its own `bwrap` process in fresh namespaces.

The command joins the sandbox's cgroups and gets its rlimits before bubblewrap starts (a
small /bin/sh does both, then execs bwrap), so every process it ever forks is born inside
them. When the server runs as root, bubblewrap sets the sandbox up with root's rights (it can
reach the state dir wherever it is) and the command then drops to the unprivileged uid with
`setpriv`: no capabilities, no way to regain any.

User namespaces stay closed to the command: `--disable-userns` where bwrap makes the user
namespace (unprivileged hosts), a seccomp filter (`seccomp.py`) where it runs as root. The one
exception is a root host without a pids cgroup, where a user namespace per command is what
holds the processes limit (`limits.py`); there the command may make more of them.

Commands get a fresh network namespace each, until a background job asks the sandbox to
`share_network`: then one namespace, kept alive by a bind mount at `<sandbox dir>/netns`,
is joined (`nsenter`) by every later command, so a server one started is reachable on
loopback from the next. Root hosts only. With an egress allowlist, one loopback bridge to the
proxy then serves the shared network instead of one per command.

Nothing of the host's layout shows inside: bwrap reads its options from a file (`--args`), so
/proc/1/cmdline (bwrap's init) holds no host path, and every writable mount and /etc come from
the sandbox's own disk and overlay, whose mount options name no host path (`overlay.py`).

On a declared image (`environment.image_environment`) the image's top-level directories come
from the sandbox's overlay (the image's root is its lowest layer) instead of the host's /usr,
/bin, /lib..., and so does /etc (the image's, under our `passwd`, `hosts`...). Two things the
platform needs inside keep working whatever the image holds: dropping to the sandbox uid is a
statically linked helper bound at a private path (`DROPUID_PATH`), and the platform's own
`git` (commits, bundles, syncs run inside the sandbox), when the image has no `git` on its
PATH, runs on the host's tools view of the same sandbox: the same namespaces, cgroups, uid,
workspace and home, only /usr and /etc are the host's, read-only, as without an image.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from functools import cache, cached_property
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
from images.sandboxes.environment import (
    BRIDGE_COMMAND,
    BRIDGE_PATH,
    EGRESS_DIR,
    RUN_DIR,
    SANDBOX_UID,
    host_env,
    image_environment,
    runs_on_image,
)
from images.sandboxes.gvisor_helpers import static_helper
from images.sandboxes.limits import join_and_exec, rlimit_script, userns_available
from images.sandboxes.local import LAYOUT_VERSION, LocalBackend, LocalSandbox
from images.sandboxes.mountns import (
    NAMESPACE_FROM,
    SandboxesRoot,
    make_netns,
    nsenter_args,
    start_namespace,
)
from images.sandboxes.overlay import unmount
from images.sandboxes.process import run_process
from images.sandboxes.seccomp import write_filter

EGRESS_READY = ".nightshift-egress-ready"


@cache
def bwrap_version() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed: `apt-get install bubblewrap` (make run does this)"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().replace("bubblewrap ", "") or "unknown"


DROPUID_PATH = f"{RUN_DIR}/dropuid"


def _static_args() -> list[str]:
    return [*_namespace_args(), *_host_root_args(), "--proc", "/proc", "--dev", "/dev"]


def _namespace_args() -> list[str]:
    return [
        "bwrap",
        # Every namespace but the user one (added only on unprivileged hosts, see `command`).
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--hostname",
        "sandbox",
        "--perms", "0755", "--dir", "/home",
    ]  # fmt: skip


def _host_root_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    return args


class BwrapSandbox(LocalSandbox):
    """Each command is its own `bwrap` process in fresh namespaces."""

    backend = "bwrap"
    _execs = 0
    netns: Path | None = None
    """The network namespace every command joins, once `share_network` made one."""
    _bridge: asyncio.Future[ExecResult] | None = None
    _namespace: Future[int | None] | None = None
    namespace_fd: int | None = None
    """The mount namespace every command starts in (`mountns.py`), once made; None: the
    host's."""
    _rooted = False
    _private = False

    def create(self) -> None:
        backend = self._backend
        assert isinstance(backend, BwrapBackend)
        self._private = backend.sandboxes_root.enter()
        self._rooted = True
        super().create()

    async def ready(self) -> None:
        # A namespace pays on a crowded host only (`mountns.py`), and costs about what it
        # saves one command: it is made for a later command than the first.
        backend = self._backend
        assert isinstance(backend, BwrapBackend)
        crowded = len(backend.live) >= backend.namespace_from
        if self._private and self._namespace is None and self._execs >= 1 and crowded:
            self._namespace = start_namespace(
                backend.state_dir, self.dir, backend.namespace_stage, backend.sandboxes_root.root
            )
        if self._namespace is not None and self.namespace_fd is None:
            self.namespace_fd = await asyncio.wrap_future(self._namespace)

    async def share_network(self) -> None:
        if self.netns is not None:
            return
        if self.owner is None:
            raise UnsupportedSetting(
                "a network shared between commands (background jobs) needs a root host "
                "under bubblewrap; use the gVisor backend or run as root"
            )
        path = self.dir / "netns"
        await asyncio.to_thread(make_netns, path)
        self.netns = path
        if self.spec.egress:
            await self._start_bridge()

    async def _start_bridge(self) -> None:
        """One loopback bridge to the egress proxy for the shared network (each command's
        own bridge would find the port taken), held like a background job."""
        marker = self.tmp / EGRESS_READY
        marker.unlink(missing_ok=True)
        argv = [*BRIDGE_COMMAND, "--ready", f"/tmp/{EGRESS_READY}"]  # noqa: S108 (its own /tmp)
        task = asyncio.ensure_future(self.exec(argv, timeout=self.limits.sandbox_timeout_s))
        for _ in range(200):
            if marker.exists():
                self._bridge = task
                return
            if task.done():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        raise SandboxError(f"sandbox {self.id}: the egress bridge of its shared network failed")

    def inner(self, argv: Sequence[str]) -> list[str]:
        # On a shared network one bridge serves every command (`_start_bridge`).
        return list(argv) if self.netns is not None else super().inner(argv)

    def destroy(self) -> None:
        # The namespace holds copies of the sandbox's mounts: it goes first.
        fd = self._namespace.result() if self._namespace is not None else None
        self._namespace = self.namespace_fd = None
        if fd is not None:
            os.close(fd)
        if self.netns is not None:
            unmount(str(self.netns))
        try:
            super().destroy()
        finally:
            if self._rooted:
                self._rooted = False
                backend = self._backend
                assert isinstance(backend, BwrapBackend)
                backend.sandboxes_root.leave()

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
        args_file = self.dir / f"bwrap-{self._execs}.args"
        try:
            return await run_process(
                self.command(argv, cwd, self.env_for(env), args_file),
                env=host_env(),
                timeout=timeout,
                output_cap=output_cap or self.limits.output_cap_bytes,
                stdin=stdin,
                on_timeout=self.on_timeout,
            )
        finally:
            args_file.unlink(missing_ok=True)

    def command(
        self,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str],
        args_file: Path | None = None,
    ) -> list[str]:
        """The host argv; bwrap's options go to `args_file`, read as descriptor 3."""
        backend = self._backend
        assert isinstance(backend, BwrapBackend)
        on_image = self.environment is not None and runs_on_image(self.environment, argv)
        args = list(self.image_args if on_image else backend.static_args[1:])
        if self.netns is not None:
            args.remove("--unshare-net")
        layout = self.cgroup.layout
        inputs = [str(args_file or self.dir / "bwrap.args")]
        if self.owner is None:
            # Unprivileged host: a user namespace maps us to the sandbox's agent uid.
            args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
            args += ["--disable-userns"]
        elif layout.pids is not None:
            args += ["--seccomp", "4"]
            inputs.append(str(backend.seccomp_filter))
        args += ["--ro-bind", str(self.ws.merged / "etc") if on_image else str(self.etc), "/etc"]
        args += [
            "--bind", str(self.tmp), "/tmp",  # noqa: S108
            "--bind", str(self.ws.merged / "workspace"), WORKDIR,
            "--bind", str(self.ws.merged / "home"), HOME,
        ]  # fmt: skip
        if self.spec.egress or on_image:
            args += ["--perms", "0755", "--dir", RUN_DIR]
        if on_image and self.owner is not None:
            args += ["--ro-bind", str(backend.dropuid), DROPUID_PATH]
        if self.spec.egress:
            args += ["--ro-bind", str(self.bridge), BRIDGE_PATH]
            args += ["--ro-bind", str(self.egress_dir), EGRESS_DIR]
        args += ["--chdir", cwd]
        for key, value in env.items():
            args += ["--setenv", key, value]
        inner = self.inner(argv)
        if layout.pids is None:
            # No pids cgroup: RLIMIT_NPROC inside a user namespace of the command's own, which
            # the kernel counts per namespace, not per (shared) host uid.
            nproc = [
                "/bin/sh",
                "-c",
                f'ulimit -p {self.limits.pids} || exit 125\nexec "$@"',
                "nightshift-nproc",
            ]
            inner = [*nproc, *inner]
            if self.owner is not None:
                inner = ["unshare", "--user", "--map-current-user", "--", *inner]
        if self.owner is not None:
            # Root host: bwrap sets the sandbox up with root's rights (it can reach the state
            # dir wherever it is), then the command drops to the unprivileged host uid with no
            # capabilities and no way to regain any.
            uid, gid = self.owner
            if on_image:
                inner = [DROPUID_PATH, str(uid), str(gid), *inner]
            else:
                inner = [
                    "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *inner,
                ]  # fmt: skip
        fd = os.open(inputs[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(a.encode() + b"\0" for a in args))
        join = nsenter_args(self.namespace_fd, self.netns)
        return join_and_exec(
            self.cgroup.procs_files(),
            rlimit_script(self.limits, layout),
            [*join, "bwrap", "--args", "3", "--", *inner],
            inputs,
        )

    @cached_property
    def image_args(self) -> list[str]:
        """bwrap's options up to /dev for a command on the declared image: its top-level
        directories bound read-only from the sandbox's overlay, its symlinks as they are."""
        assert self.environment is not None
        args = _namespace_args()[1:]
        for name, target in self.environment.tops():
            if target is not None:
                args += ["--symlink", target, f"/{name}"]
            else:
                args += ["--ro-bind", str(self.ws.merged / name), f"/{name}"]
        return [*args, "--proc", "/proc", "--dev", "/dev"]


class BwrapBackend(LocalBackend):
    """Sandboxes under bubblewrap; state lives in `<state_dir>/{sandboxes,snapshots}`."""

    name = "bwrap"
    sandbox_class = BwrapSandbox

    _static: list[str] | None = None
    _seccomp: Path | None = None

    @property
    def seccomp_filter(self) -> Path:
        """The compiled filter against user namespaces (bwrap as root)."""
        if self._seccomp is None:
            self._seccomp = write_filter(self.state_dir / "bwrap" / "no-userns.bpf")
        return self._seccomp

    @cached_property
    def sandboxes_root(self) -> SandboxesRoot:
        return SandboxesRoot(self.state_dir / "sandboxes")

    namespace_from = NAMESPACE_FROM
    """Live sandboxes from which a sandbox's commands get a mount namespace of their own."""

    @property
    def namespace_stage(self) -> Path:
        """Where a sandbox's namespace sets its own directory aside (`mountns.py`)."""
        return self.state_dir / "bwrap" / "mntns-stage"

    @cached_property
    def dropuid(self) -> Path:
        """The static helper that drops to the sandbox uid inside a declared image."""
        return static_helper(self.state_dir, "dropuid")

    @property
    def static_args(self) -> list[str]:
        if self._static is None:
            bwrap_version()  # raises SandboxUnavailable, with the fix, when bwrap is missing
            self._static = _static_args()
        return self._static

    def check_available(self) -> None:
        super().check_available()
        self.static_args  # noqa: B018  (fails clearly here rather than at the first exec)
        if self.owner is not None:
            self.seccomp_filter  # noqa: B018  (an unknown architecture is refused here)

    def refuse_unenforceable(self, spec: SandboxSpec) -> None:
        super().refuse_unenforceable(spec)
        environment = image_environment(spec.source)
        # Without a pids cgroup the process limit is set by a shell inside (`command`).
        shell = environment is not None and (Path(environment.rootfs) / "bin/sh").exists()
        if environment is not None and self.cgroups.pids is None and (self.owner or not shell):
            raise UnsupportedSetting(
                f"the image {environment.reference} needs a pids cgroup on this host (or, "
                "without root, a /bin/sh of its own) to hold the process limit"
            )
        if self.cgroups.pids is None and not userns_available():
            raise UnsupportedSetting(
                "no writable pids cgroup and no user namespaces on this host: the process "
                "limit cannot be enforced per sandbox"
            )

    def runtime_version(self) -> str:
        try:
            return f"bwrap-{bwrap_version()}/{LAYOUT_VERSION}"
        except SandboxUnavailable:
            return f"bwrap-missing/{LAYOUT_VERSION}"
