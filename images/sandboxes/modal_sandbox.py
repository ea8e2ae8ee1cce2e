"""Modal sandboxes: commands, files and snapshots of one `modal.Sandbox` (the backend that
starts them is `modal.py`). Commands run as the unprivileged `agent` under `prlimit`; paths
are resolved inside the sandbox and refused when they leave /workspace or are not a regular
file; `copy_out` streams a file to the host in chunks, capped."""

from __future__ import annotations

import asyncio
import contextlib
import math
import posixpath
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from images.ansi import NO_COLOR_ENV
from images.sandboxes import SandboxConfig
from images.sandboxes.base import (
    HOME,
    SANDBOX_PATH,
    WORKDIR,
    EndedBy,
    ExecResult,
    FileEntry,
    FileKind,
    FileTooLarge,
    PathEscape,
    SandboxError,
    SandboxFileError,
    SandboxSpec,
    SandboxUnavailable,
    SnapshotRef,
)
from images.sandboxes.offload import FILE_TIMEOUT_S
from images.sandboxes.pathsafe import clean_relative

AGENT_UID = 1000
RUNTIME = "modal-1"
SNAPSHOT_TIMEOUT_S = 300
IMAGE_CACHE = "modal-image.json"
FLOOD_FACTOR = 64


def load_modal() -> Any:
    try:
        import modal
    except ImportError as exc:  # pragma: no cover - modal is a dependency
        raise SandboxUnavailable("the modal client is not installed: pip install modal") from exc
    return modal


def one_line(exc: BaseException) -> str:
    """An error from Modal on one line (a build error comes with the build's log)."""
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__


_PROBE = (
    'p=$(realpath "$1" -- "$2") || exit 1; printf "%s\\n" "$p"; [ ! -e "$p" ] || stat -c %F -- "$p"'
)
_KINDS = {
    "fifo": "a FIFO",
    "socket": "a socket",
    "character special file": "a character device",
    "block special file": "a block device",
    "symbolic link": "a symlink",
}


def confine_cmd(rel: str, must_exist: bool) -> list[str]:
    """argv printing the canonical path of `rel` under /workspace (symlinks resolved) and, on
    a second line, what kind of file is there (`stat`'s %F; nothing when there is none)."""
    flag = "-e" if must_exist else "-m"
    return ["sh", "-c", _PROBE, "probe", flag, posixpath.join(WORKDIR, rel)]


def check_confined(resolved: str, path: str) -> str:
    resolved = resolved.strip()
    if resolved != WORKDIR and not resolved.startswith(WORKDIR + "/"):
        raise PathEscape(f"{path}: resolves outside the workspace (symlink or ..)")
    return resolved


def check_kind(kind: str, path: str, want: str) -> None:
    """Refuse anything but a regular file (`want` "file") or a directory (`want` "dir")."""
    kind = kind.strip()
    if not kind:  # nothing there yet: a write creates it
        return
    if kind == "directory" if want == "dir" else kind.startswith("regular"):
        return
    if kind == "directory":
        raise SandboxFileError(f"{path}: is a directory; use list_files")
    what = "a regular file" if kind.startswith("regular") else _KINDS.get(kind, f"a {kind}")
    wanted = "a directory" if want == "dir" else "a regular file"
    raise SandboxFileError(f"{path} is {what}, not {wanted}")


def command_argv(argv: Sequence[str], pids: int, cpu_seconds: int) -> list[str]:
    """`argv` as the unprivileged agent, with the process and CPU-time limits."""
    return [
        "setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        "prlimit", f"--nproc={pids}:{pids}", f"--cpu={cpu_seconds}:{cpu_seconds + 5}",
        "--core=0:0", "--", *argv,
    ]  # fmt: skip


def sandbox_env(spec: SandboxSpec, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {"PATH": SANDBOX_PATH, "HOME": HOME, "LANG": "C.UTF-8", "USER": "agent"}
    env.update(NO_COLOR_ENV)
    env.update(spec.env)
    env.update(extra or {})
    return env


def create_kwargs(spec: SandboxSpec, config: SandboxConfig, app: Any, image: Any) -> dict[str, Any]:
    """Keyword arguments of `modal.Sandbox.create` for `spec` (checked offline in tests)."""
    limits = spec.limits
    kwargs: dict[str, Any] = {
        "app": app,
        "image": image,
        "timeout": int(limits.sandbox_timeout_s),
        "idle_timeout": max(60, int(limits.exec_timeout_s) + 60),
        "workdir": WORKDIR,
        "cpu": config.modal_cpu,
        "memory": (limits.memory_mb, limits.memory_mb),
        "env": {"HOME": HOME, "LANG": "C.UTF-8"},
    }
    if spec.egress:
        kwargs["outbound_domain_allowlist"] = list(spec.egress)
    else:
        kwargs["block_network"] = True
    if config.modal_environment:
        kwargs["environment_name"] = config.modal_environment
    return kwargs


class SandboxOwner(Protocol):
    """What a sandbox needs of the backend that started it (`modal.ModalBackend`)."""

    config: SandboxConfig

    def forget(self, sandbox_id: str) -> None: ...


class ModalSandbox:
    backend = "modal"

    def __init__(self, owner: SandboxOwner, spec: SandboxSpec, sb: Any) -> None:
        self._backend = owner
        self.spec = spec
        self.source = spec.source
        self.sb = sb
        self.id: str = sb.object_id
        self.terminated = False
        self.tmp: Path | None = None
        self.deadline = time.monotonic() + spec.limits.sandbox_timeout_s

    async def _run(
        self, argv: Sequence[str], timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """A helper command as root (path checks, ownership), output in full."""
        proc = await self.sb.exec.aio(*argv, timeout=int(timeout or 60), text=False)
        out = await proc.stdout.read.aio()
        err = await proc.stderr.read.aio()
        code = await proc.wait.aio()
        return int(code), bytes(out), bytes(err)

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
        modal = load_modal()
        limits = self.spec.limits
        rel = clean_relative(cwd or ".")
        workdir = WORKDIR if rel == "." else f"{WORKDIR}/{rel}"
        wall = timeout or limits.exec_timeout_s
        cap = output_cap or limits.output_cap_bytes
        started = time.monotonic()
        try:
            proc = await self.sb.exec.aio(
                *command_argv(argv, limits.pids, limits.cpu_seconds),
                workdir=workdir,
                env=sandbox_env(self.spec, env),
                timeout=max(1, math.ceil(wall)),
                text=False,
            )
            if stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.write_eof()
                await proc.stdin.drain.aio()
            (out, out_seen), (err, err_seen) = await asyncio.gather(
                _collect(proc.stdout, cap), _collect(proc.stderr, cap)
            )
            code = int(await proc.wait.aio())
        except modal.exception.Error as exc:
            raise SandboxError(f"modal exec failed: {exc}") from exc
        elapsed = time.monotonic() - started
        # Past the exec deadline the client gives up waiting and reports -1 (it may beat
        # Modal's own 124 to it); either way the command ran out of time.
        timed_out = code in (124, -1) and elapsed >= wall * 0.9
        if timed_out:
            code = 124
        ended_by: EndedBy = ""
        hits: list[str] = []
        if timed_out:
            ended_by = "timeout"
        elif code == 137:
            ended_by = "memory"
        elif code == 152:
            ended_by = "cpu"
        if ended_by:
            hits.append(ended_by)
        truncated = out_seen > cap or err_seen > cap
        if truncated:
            hits.append("output")
        return ExecResult(
            exit_code=code,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            duration_ms=int(elapsed * 1000),
            timed_out=timed_out,
            oom_killed=code == 137,
            truncated=truncated,
            ended_by=ended_by,
            limits_hit=tuple(hits),
        )

    async def _resolve(self, path: str, must_exist: bool, want: str = "file") -> str:
        rel = clean_relative(path)
        code, out, err = await self._run(confine_cmd(rel, must_exist), timeout=FILE_TIMEOUT_S)
        if code != 0:
            raise SandboxFileError(f"{path}: {err.decode(errors='replace').strip() or 'not found'}")
        resolved, _, kind = out.decode(errors="replace").partition("\n")
        target = check_confined(resolved, path)
        check_kind(kind, path, want)
        return target

    async def read_file(self, path: str, max_bytes: int = 4 * 1024 * 1024) -> bytes:
        modal = load_modal()
        target = await self._resolve(path, must_exist=True)
        try:
            data = bytes(
                await asyncio.wait_for(self.sb.filesystem.read_bytes.aio(target), FILE_TIMEOUT_S)
            )
        except TimeoutError:
            raise SandboxFileError(f"{path}: no answer within {FILE_TIMEOUT_S:g} s") from None
        except modal.exception.Error as exc:
            raise SandboxFileError(f"{path}: {exc}") from exc
        if len(data) > max_bytes:
            raise FileTooLarge(f"{path}: {len(data)} bytes is more than the {max_bytes}-byte limit")
        return data

    async def copy_out(self, path: str, dest: Path, max_bytes: int) -> int:
        """Stream the file through `head -c` in the sandbox: never more than the cap crosses."""
        modal = load_modal()
        target = await self._resolve(path, must_exist=True)
        copied = 0
        try:
            with dest.open("xb") as fh:
                proc = await self.sb.exec.aio(
                    "head", "-c", str(max_bytes + 1), "--", target, timeout=600, text=False
                )
                async for chunk in proc.stdout:
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise FileTooLarge(f"{path}: more than the {max_bytes}-byte limit")
                    fh.write(chunk)
                code = int(await proc.wait.aio())
            if code != 0:
                err = (await proc.stderr.read.aio()).decode(errors="replace").strip()
                raise SandboxFileError(f"{path}: copying it out failed: {err or code}")
        except modal.exception.Error as exc:
            dest.unlink(missing_ok=True)
            raise SandboxFileError(f"{path}: {exc}") from exc
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return copied

    async def write_file(self, path: str, data: bytes) -> None:
        modal = load_modal()
        if clean_relative(path) == ".":
            raise SandboxFileError("a file path is required")
        target = await self._resolve(path, must_exist=False)
        try:
            await asyncio.wait_for(self.sb.filesystem.write_bytes.aio(data, target), FILE_TIMEOUT_S)
        except TimeoutError:
            raise SandboxFileError(f"{path}: no answer within {FILE_TIMEOUT_S:g} s") from None
        except modal.exception.Error as exc:
            raise SandboxFileError(f"{path}: {exc}") from exc
        # The filesystem API writes as root; hand the file and new parents to the agent.
        parts, chain = posixpath.relpath(target, WORKDIR).split("/"), []
        for i in range(1, len(parts) + 1):
            chain.append(posixpath.join(WORKDIR, *parts[:i]))
        await self._run(["chown", "-h", f"{AGENT_UID}:{AGENT_UID}", "--", *chain])

    async def list_files(
        self, path: str = ".", recursive: bool = False, limit: int = 2000
    ) -> list[FileEntry]:
        rel = clean_relative(path)
        target = await self._resolve(path, must_exist=True, want="dir")
        depth = [] if recursive else ["-maxdepth", "1"]
        code, out, err = await self._run(
            [
                "find",
                target,
                "-mindepth",
                "1",
                *depth,
                "-name",
                ".git",
                "-prune",
                "-o",
                "-printf",
                "%y %s %P\\0",
            ]
        )
        if code != 0:
            raise SandboxFileError(f"{path}: {err.decode(errors='replace').strip()}")
        kinds: dict[str, FileKind] = {"f": "file", "d": "dir", "l": "symlink"}
        prefix = "" if rel == "." else rel + "/"
        entries = []
        for record in sorted(out.decode(errors="replace").split("\0")):
            if not record:
                continue
            kind, size, name = record.split(" ", 2)
            entries.append(FileEntry(prefix + name, kinds.get(kind, "other"), int(size)))
            if len(entries) >= limit:
                break
        return entries

    async def snapshot(self) -> SnapshotRef:
        modal = load_modal()
        try:
            image = await self.sb.snapshot_filesystem.aio(
                timeout=SNAPSHOT_TIMEOUT_S, ttl=self._backend.config.snapshot_ttl_s
            )
        except modal.exception.Error as exc:
            raise SandboxError(f"modal snapshot failed: {exc}") from exc
        base = self.source.image if isinstance(self.source, SnapshotRef) else self.source
        return SnapshotRef(
            id=image.object_id,
            image=base,
            backend="modal",
            location=image.object_id,
            runtime=RUNTIME,
            created_at=time.time(),
            full=True,
        )

    async def share_network(self) -> None:
        """Every exec already runs in the sandbox's one container and network."""

    async def snapshot_image(self) -> str:
        """The sandbox's filesystem as a Modal image that does not expire: a repo's image,
        which stays until the image collection retires it, however long the tip stays put."""
        modal = load_modal()
        try:
            image = await self.sb.snapshot_filesystem.aio(timeout=SNAPSHOT_TIMEOUT_S, ttl=None)
        except modal.exception.Error as exc:
            raise SandboxError(f"modal snapshot failed: {one_line(exc)}") from exc
        return str(image.object_id)

    def egress_refusals(self) -> list[str]:
        return []  # Modal's outbound_domain_allowlist refuses out of this host's sight

    async def terminate(self) -> None:
        if self.terminated:
            return
        self.terminated = True
        self._backend.forget(self.id)
        modal = load_modal()
        with contextlib.suppress(modal.exception.Error):
            await self.sb.terminate.aio()


async def _collect(stream: Any, cap: int) -> tuple[bytes, int]:
    """Read a stream to its end keeping `cap` bytes; stop reading past FLOOD_FACTOR x cap."""
    kept, seen = bytearray(), 0
    async for chunk in stream:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        room = cap - len(kept)
        if room > 0:
            kept += data[:room]
        seen += len(data)
        if seen > FLOOD_FACTOR * cap:
            break
    return bytes(kept), seen
