"""The local bubblewrap backend: each command is its own `bwrap` process in fresh namespaces.

What a command sees: the host's /usr (read-only) and a few harmless /etc files, its workspace
at /workspace and home at /home/agent (both on the sandbox's overlay), a private /tmp, /proc
and a minimal /dev. No network, no host processes, no data dir, no other sandbox. When the
host process is root, commands run as an unprivileged host uid (65534 unless configured), so
even a namespace escape lands without privileges.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from images.sandboxes.base import (
    HOME,
    SANDBOX_PATH,
    WORKDIR,
    ExecResult,
    FileEntry,
    ImageRef,
    SandboxError,
    SandboxSpec,
    SandboxUnavailable,
    SnapshotRef,
    SnapshotUnusable,
    UnsupportedSetting,
)
from images.sandboxes.overlay import Workspace, copy_tree
from images.sandboxes.pathsafe import ConfinedTree, clean_relative
from images.sandboxes.process import run_process

LAYOUT_VERSION = "ns1"
SANDBOX_UID = 1000  # the uid commands see inside the sandbox
_ETC_PATHS = (
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/bash.bashrc",
    "/etc/profile",
    "/etc/inputrc",
    "/etc/python3",
    "/etc/python3.11",
)


@cache
def bwrap_version() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap is not installed: `apt-get install bubblewrap` (make run does this)"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().replace("bubblewrap ", "") or "unknown"


def default_owner() -> tuple[int, int] | None:
    """Host uid/gid for sandboxed processes: unprivileged when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    uid = int(os.environ.get("NIGHTSHIFT_SANDBOX_UID", "65534"))
    return (uid, uid)


def _static_args() -> list[str]:
    args = [
        "bwrap",
        # Every namespace but the user one (added only on unprivileged hosts, see `_argv`).
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
        "--perms", "0755", "--dir", "/etc",
        "--perms", "0755", "--dir", "/home",
        "--ro-bind",
        "/usr",
        "/usr",
    ]  # fmt: skip
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    for etc in _ETC_PATHS:
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    args += ["--proc", "/proc", "--dev", "/dev"]
    return args


class LocalSandbox:
    backend = "bwrap"

    def __init__(
        self, owner_backend: BwrapBackend, spec: SandboxSpec, sandbox_dir: Path, lowers: list[Path]
    ) -> None:
        self.id = sandbox_dir.name
        self.source = spec.source
        self.spec = spec
        self._backend = owner_backend
        self._dir = sandbox_dir
        self._owner = owner_backend.owner
        self._ws = Workspace(sandbox_dir / "fs", lowers, self._owner, owner_backend.state_dir)
        self._tmp = sandbox_dir / "tmp"
        self._etc = sandbox_dir / "etc"
        self._terminated = False
        self._tasks: set[asyncio.Task[ExecResult]] = set()
        self.files = ConfinedTree(str(self._ws.merged / "workspace"), self._owner)

    def create(self) -> None:
        self._dir.mkdir(parents=True)
        self._ws.create()
        for sub in ("workspace", "home"):
            (self._ws.merged / sub).mkdir(exist_ok=True)
        self._tmp.mkdir(mode=0o1777)
        os.chmod(self._tmp, 0o1777)  # noqa: S103  (the sandbox's own /tmp, sticky)
        self._etc.mkdir()
        uid, gid = self._owner or (SANDBOX_UID, SANDBOX_UID)
        (self._etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{uid}:{gid}:agent:{HOME}:/bin/bash\n"
        )
        (self._etc / "group").write_text(f"root:x:0:\nagent:x:{gid}:\n")
        (self._etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
        (self._etc / "hostname").write_text("sandbox\n")
        (self._etc / "resolv.conf").write_text("")

    def _argv(self, argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> list[str]:
        args = list(self._backend.static_args)
        if self._owner is None:
            # Unprivileged host: a user namespace maps us to the sandbox's agent uid.
            args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        for name in ("passwd", "group", "hosts", "hostname", "resolv.conf"):
            args += ["--ro-bind", str(self._etc / name), f"/etc/{name}"]
        args += [
            "--bind", str(self._tmp), "/tmp",  # noqa: S108
            "--bind", str(self._ws.merged / "workspace"), WORKDIR,
            "--bind", str(self._ws.merged / "home"), HOME,
            "--chdir", cwd,
        ]  # fmt: skip
        for key, value in env.items():
            args += ["--setenv", key, value]
        if self._owner is not None:
            # Root host: bwrap sets the sandbox up with root's rights (it can reach the state
            # dir wherever it is), then the command drops to the unprivileged host uid with no
            # capabilities and no way to regain any.
            uid, gid = self._owner
            return [
                *args, "--", "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv,
            ]  # fmt: skip
        return [*args, "--", *argv]

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
        if self._terminated:
            raise SandboxError(f"sandbox {self.id} has been terminated")
        if not argv:
            raise SandboxError("exec needs a command")
        rel = clean_relative(cwd or ".")
        inside_cwd = WORKDIR if rel == "." else f"{WORKDIR}/{rel}"
        full_env = {"PATH": SANDBOX_PATH, "HOME": HOME, "LANG": "C.UTF-8", "USER": "agent"}
        full_env.update(self.spec.env)
        full_env.update(env or {})
        limits = self.spec.limits
        task = asyncio.ensure_future(
            run_process(
                self._argv(argv, inside_cwd, full_env),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                timeout=timeout or limits.exec_timeout_s,
                output_cap=output_cap or limits.output_cap_bytes,
                stdin=stdin,
            )
        )
        self._tasks.add(task)
        try:
            return await task
        finally:
            self._tasks.discard(task)

    async def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        return await asyncio.to_thread(self.files.read, path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        await asyncio.to_thread(self.files.write, path, data)

    async def list_files(
        self, path: str = ".", recursive: bool = False, limit: int = 2000
    ) -> list[FileEntry]:
        return await asyncio.to_thread(self.files.listdir, path, recursive, limit)

    async def snapshot(self) -> SnapshotRef:
        return await asyncio.to_thread(self._backend.capture, self, self._ws)

    async def terminate(self) -> None:
        if self._terminated:
            return
        self._terminated = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._destroy)

    def _destroy(self) -> None:
        self._ws.destroy()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._backend.forget(self.id)


class BwrapBackend:
    """Sandboxes under bubblewrap; state lives in `<state_dir>/{sandboxes,snapshots}`."""

    name = "bwrap"

    def __init__(self, state_dir: Path, owner: tuple[int, int] | None = None) -> None:
        self.state_dir = state_dir
        self.owner = owner
        self.live: dict[str, LocalSandbox] = {}
        self._static: list[str] | None = None

    @property
    def static_args(self) -> list[str]:
        if self._static is None:
            bwrap_version()  # raises SandboxUnavailable, with the fix, when bwrap is missing
            self._static = _static_args()
        return self._static

    def runtime_version(self) -> str:
        try:
            return f"bwrap-{bwrap_version()}/{LAYOUT_VERSION}"
        except SandboxUnavailable:
            return f"bwrap-missing/{LAYOUT_VERSION}"

    def _lowers(self, source: ImageRef | SnapshotRef) -> list[Path]:
        if isinstance(source, SnapshotRef):
            if source.runtime != self.runtime_version():
                raise SnapshotUnusable(
                    f"snapshot {source.id} was taken by {source.runtime}; this host runs "
                    f"{self.runtime_version()}: start from the newest image instead"
                )
            layers = [Path(source.location), *(Path(p) for p in source.layers)]
            for layer in layers:
                if not layer.is_dir():
                    raise SnapshotUnusable(f"snapshot {source.id}: layer {layer} is gone")
            image_root = Path(source.image.location) / "root"
            if not image_root.is_dir():
                raise SnapshotUnusable(
                    f"snapshot {source.id}: its base image {source.image.id} is gone"
                )
            return layers if source.full else [*layers, image_root]
        image_root = Path(source.location) / "root"
        if not image_root.is_dir():
            raise SandboxError(f"image {source.id} has no root directory at {image_root}")
        return [image_root]

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        if spec.egress:
            raise UnsupportedSetting(
                "the bwrap backend has no egress proxy yet; refusing an egress allowlist "
                f"({', '.join(spec.egress)}) rather than ignoring it"
            )
        self.static_args  # noqa: B018  (fails clearly here rather than at the first exec)
        lowers = self._lowers(spec.source)
        sandbox_id = f"sb-{secrets.token_hex(6)}"
        sandbox = LocalSandbox(self, spec, self.state_dir / "sandboxes" / sandbox_id, lowers)
        await asyncio.to_thread(sandbox.create)
        self.live[sandbox_id] = sandbox
        return sandbox

    def forget(self, sandbox_id: str) -> None:
        self.live.pop(sandbox_id, None)

    def capture(self, sandbox: LocalSandbox, ws: Workspace) -> SnapshotRef:
        """Copy what the sandbox changed into a new snapshot layer."""
        snap_id = f"snap-{secrets.token_hex(6)}"
        snap_dir = self.state_dir / "snapshots" / snap_id
        layer = snap_dir / "layer"
        layer.mkdir(parents=True)
        copy_tree(ws.changes_dir(), layer)
        source = sandbox.source
        if isinstance(source, SnapshotRef):
            image, layers = source.image, (source.location, *source.layers) if ws.overlay else ()
        else:
            image, layers = source, ()
        ref = SnapshotRef(
            id=snap_id,
            image=image,
            backend=self.name,
            location=str(layer),
            runtime=self.runtime_version(),
            created_at=time.time(),
            layers=tuple(layers),
            full=not ws.overlay,
        )
        meta = {"id": snap_id, "image": image.id, "runtime": ref.runtime, "layers": list(layers)}
        (snap_dir / "meta.json").write_text(json.dumps(meta))
        return ref
