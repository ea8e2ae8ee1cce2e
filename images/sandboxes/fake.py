"""An in-memory sandbox for unit tests: files in a dict, commands answered by a handler.

It runs nothing on the host. Like httpx's MockTransport, a test passes `handler` to decide
what each command returns; without one every command exits 127.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from images.sandboxes.base import (
    ExecResult,
    FileEntry,
    FileTooLarge,
    ImageRef,
    SandboxError,
    SandboxFileError,
    SandboxSpec,
    SnapshotRef,
    SnapshotUnusable,
    UnsupportedSetting,
)
from images.sandboxes.pathsafe import CHUNK, clean_relative

Handler = Callable[["FakeSandbox", Sequence[str], str], ExecResult]


def _no_commands(sandbox: FakeSandbox, argv: Sequence[str], cwd: str) -> ExecResult:
    return ExecResult(127, "", f"fake sandbox cannot run {argv[0]!r}", 0)


class FakeSandbox:
    backend = "fake"

    def __init__(self, spec: SandboxSpec, files: dict[str, bytes], handler: Handler) -> None:
        self.id = f"fake-{secrets.token_hex(4)}"
        self.source = spec.source
        self.spec = spec
        self.files = files
        self.handler = handler
        self.commands: list[list[str]] = []
        self.terminated = False
        self.tmp: Path | None = None
        self.deadline = time.monotonic() + spec.limits.sandbox_timeout_s

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
        self.commands.append(list(argv))
        return self.handler(self, argv, clean_relative(cwd or "."))

    async def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        rel = clean_relative(path)
        if rel not in self.files:
            raise SandboxFileError(f"{path}: no such file or directory")
        return self.files[rel][:max_bytes]

    async def copy_out(self, path: str, dest: Path, max_bytes: int) -> int:
        data = await self.read_file(path, max_bytes + 1)
        if len(data) > max_bytes:
            raise FileTooLarge(f"{path}: more than the {max_bytes}-byte limit")
        with dest.open("xb") as fh:
            for start in range(0, len(data), CHUNK):
                fh.write(data[start : start + CHUNK])
        return len(data)

    async def write_file(self, path: str, data: bytes) -> None:
        rel = clean_relative(path)
        if rel == ".":
            raise SandboxFileError("a file path is required")
        self.files[rel] = bytes(data)

    async def list_files(
        self, path: str = ".", recursive: bool = False, limit: int = 2000
    ) -> list[FileEntry]:
        rel = clean_relative(path)
        prefix = "" if rel == "." else rel + "/"
        seen: dict[str, FileEntry] = {}
        for name, data in sorted(self.files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                top = prefix + rest.split("/", 1)[0]
                seen.setdefault(top, FileEntry(top, "dir", 0))
            else:
                seen[name] = FileEntry(name, "file", len(data))
        return list(seen.values())[:limit]

    async def snapshot(self) -> SnapshotRef:
        image = self.source.image if isinstance(self.source, SnapshotRef) else self.source
        snap = SnapshotRef(
            id=f"fake-snap-{secrets.token_hex(4)}",
            image=image,
            backend="fake",
            location="memory",
            runtime="fake-1",
            created_at=time.time(),
            full=True,
        )
        FakeBackend.snapshots[snap.id] = dict(self.files)
        FakeBackend.snapshot_times[snap.id] = snap.created_at
        return snap

    async def share_network(self) -> None:
        """Nothing to share: the fake runs no processes."""

    def egress_refusals(self) -> list[str]:
        return []  # the fake backend refuses egress at start (UnsupportedSetting)

    async def terminate(self) -> None:
        self.terminated = True


class FakeBackend:
    name = "fake"
    owner: tuple[int, int] | None = None
    snapshots: dict[str, dict[str, bytes]] = {}
    snapshot_times: dict[str, float] = {}

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or _no_commands
        self.started: list[FakeSandbox] = []

    def runtime_version(self) -> str:
        return "fake-1"

    def enforcement(self) -> dict[str, str]:
        return {}

    @property
    def live(self) -> dict[str, FakeSandbox]:
        return {s.id: s for s in self.started if not s.terminated}

    def release_stale(self) -> int:
        return 0

    def collect_snapshots(self, older_than_s: float, keep: Collection[str] = ()) -> list[str]:
        cutoff = time.time() - older_than_s
        old = [i for i, at in self.snapshot_times.items() if at < cutoff and i not in set(keep)]
        for snapshot_id in old:
            self.snapshots.pop(snapshot_id, None)
            self.snapshot_times.pop(snapshot_id, None)
        return old

    async def start(self, spec: SandboxSpec) -> FakeSandbox:
        if spec.egress:
            raise UnsupportedSetting("the fake backend has no network to allow")
        if isinstance(spec.source, SnapshotRef):
            if spec.source.runtime != self.runtime_version():
                raise SnapshotUnusable(
                    f"snapshot {spec.source.id} was taken by {spec.source.runtime}, "
                    f"not {self.runtime_version()}"
                )
            if not Path(spec.source.image.location).is_dir():
                raise SnapshotUnusable(
                    f"snapshot {spec.source.id}: its base image {spec.source.image.id} is gone"
                )
            if spec.source.id not in self.snapshots:
                raise SnapshotUnusable(f"snapshot {spec.source.id} is gone")
            files = dict(self.snapshots[spec.source.id])
        else:
            files = _load_image(spec.source)
        sandbox = FakeSandbox(spec, files, self.handler)
        self.started.append(sandbox)
        return sandbox


def _load_image(image: ImageRef) -> dict[str, bytes]:
    root = Path(image.location) / "root" / "workspace"
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }
