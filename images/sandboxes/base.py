"""The sandbox interface every backend implements, and its errors (the sandbox branch of the
images layer's tree, `images/errors.py`).

SandboxError
├── SandboxUnavailable   the backend cannot run on this host (missing binary, no token)
├── UnsupportedSetting   a limit or policy the backend cannot enforce: refused, not ignored
├── SandboxFileError     a file tool failed (missing file, not a regular file, timed out)
│   ├── PathEscape       a path or symlink leads outside the workspace
│   └── FileTooLarge     a file is over the byte cap of the read or copy
├── SnapshotUnusable     a snapshot's base image or runtime version is gone
└── SnapshotTooLarge     a snapshot would keep more than the sandbox's disk quota
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from images.errors import ImagesError

WORKDIR = "/workspace"
HOME = "/home/agent"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


class SandboxError(ImagesError):
    pass


class SandboxUnavailable(SandboxError):
    pass


class UnsupportedSetting(SandboxError):
    pass


class SandboxFileError(SandboxError):
    pass


class PathEscape(SandboxFileError):
    pass


class FileTooLarge(SandboxFileError):
    pass


class SnapshotUnusable(SandboxError):
    pass


class SnapshotTooLarge(SandboxError):
    pass


@dataclass(frozen=True)
class Limits:
    """Hard limits for every command in a sandbox."""

    memory_mb: int = 2048
    pids: int = 256
    cpu_seconds: int = 600
    exec_timeout_s: float = 600.0
    sandbox_timeout_s: float = 4 * 3600.0
    output_cap_bytes: int = 256 * 1024
    disk_mb: int = 10240
    """Bytes a sandbox may write (workspace, home, /tmp) and its snapshots may keep; 0: no
    quota (local backends)."""
    disk_inodes: int = 1_000_000
    """Files and directories a sandbox may create (local backends, with a disk quota)."""


@dataclass(frozen=True)
class ImageRef:
    """A prepared, read-only starting point holding a repository at one commit."""

    id: str
    repo: str
    sha: str
    backend: str
    location: str
    """A directory (local backends) or a provider image id (Modal)."""
    runtime: str
    built_at: float
    spec_hash: str = ""


StartMode = Literal["warm", "image", "snapshot", "cold"]
"""Where a session's sandbox came from: the warm pool, an image, its snapshot, a cold clone."""


@dataclass(frozen=True)
class SnapshotRef:
    """The changes a sandbox made, stacked over the image it started from."""

    id: str
    image: ImageRef
    backend: str
    location: str
    runtime: str
    created_at: float
    layers: tuple[str, ...] = ()
    """Older layers this snapshot stacks on (newest first), for local backends."""
    full: bool = False
    """The snapshot holds the whole tree, not only the changes (hosts without overlayfs)."""


@dataclass(frozen=True)
class SandboxSpec:
    source: ImageRef | SnapshotRef
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)
    egress: Sequence[str] = ()
    label: str = ""


EndedBy = Literal["", "timeout", "sandbox_timeout", "memory", "cpu", "output"]


@dataclass(frozen=True)
class ExecResult:
    """What one command did. `ended_by` names the limit that ended it (empty: it exited).

    Exit codes follow Modal and the shells: a timeout reports 124, a kill for memory 137.
    `limits_hit` lists every limit the command ran into, also those that did not end it
    ("pids" when a fork was refused, "output" when output was cut).
    """

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False
    ended_by: EndedBy = ""
    limits_hit: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


FileKind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class FileEntry:
    path: str
    kind: FileKind
    size: int


class Sandbox(Protocol):
    id: str
    backend: str
    source: ImageRef | SnapshotRef

    @property
    def tmp(self) -> Path | None:
        """The sandbox's /tmp as a directory on this host (where a desktop's VNC socket is
        reached); None where the sandbox's files are not on this host (Modal, fake)."""
        ...

    @property
    def deadline(self) -> float:
        """The `time.monotonic()` at which the sandbox's lifetime (`sandbox_timeout_s`) ends."""
        ...

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
        """Run one command as its own process; `cwd` is relative to the workspace."""
        ...

    async def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        """Read a file by a path relative to the workspace."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a file (and its parent directories) inside the workspace."""
        ...

    async def list_files(
        self, path: str = ".", recursive: bool = False, limit: int = 2000
    ) -> list[FileEntry]:
        """List a directory inside the workspace (without `.git`)."""
        ...

    async def copy_out(self, path: str, dest: Path, max_bytes: int) -> int:
        """Copy a workspace file to `dest`, a new file on the host, in chunks; FileTooLarge
        past `max_bytes` (and `dest` is removed). Returns the bytes copied."""
        ...

    async def snapshot(self) -> SnapshotRef:
        """Capture the changes made so far; the sandbox keeps running."""
        ...

    async def terminate(self) -> None:
        """Kill every process and release the sandbox's resources. Idempotent."""
        ...

    async def share_network(self) -> None:
        """From now on every command of this sandbox shares one network namespace, so a server
        one command started (a background job) is reachable from the next on loopback; a no-op
        where commands always share it (gVisor's container, Modal). UnsupportedSetting where
        it cannot be done."""
        ...

    def egress_refusals(self) -> list[str]:
        """What the egress proxy refused this sandbox so far, oldest first, one line each
        (`host:port: reason (allow with SETTING)`); empty where egress is enforced by a
        provider out of this host's sight (Modal) or there is no network (fake)."""
        ...


class SandboxBackend(Protocol):
    name: str

    @property
    def owner(self) -> tuple[int, int] | None:
        """The (uid, gid) that owns image and sandbox files on the host; None: this process's
        user (and backends whose files are not on this host)."""
        ...

    @property
    def live(self) -> Mapping[str, Sandbox]:
        """The sandboxes this backend started that are not terminated yet, by id."""
        ...

    def runtime_version(self) -> str:
        """Identifies what snapshots and images of this backend are compatible with."""
        ...

    def enforcement(self) -> dict[str, str]:
        """How each limit is enforced on this host, by limit; empty where the backend's
        provider enforces them out of this host's sight."""
        ...

    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Start a sandbox from an image or a snapshot."""
        ...

    def collect_snapshots(self, older_than_s: float, keep: Collection[str] = ()) -> list[str]:
        """Delete snapshots older than `older_than_s` seconds except `keep` (and what they
        stack on); returns the ids deleted."""
        ...

    def release_stale(self) -> int:
        """Release what sandboxes of exited processes left on this host (mounts, cgroups,
        containers); returns how many. 0 where nothing of a sandbox is on this host."""
        ...
