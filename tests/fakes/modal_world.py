"""What the fake Modal keeps: images, mounts, sandboxes and the commands run in them.

Each "Modal sandbox" is a real sandbox of the project's bubblewrap backend
(`images.sandboxes.make_backend("bwrap", ...)`), so commands give real output and files
written by set-up are really there in a sandbox started from the snapshot. An image is a
bubblewrap image directory (`root/workspace`, `root/home`) or a bubblewrap snapshot; its id
is `im-...` as Modal's are.

Image definitions are realised from their Dockerfile commands: `FROM <tag>` of a base
image copies that image, `FROM <reference>` of anything else is a registry image (the
reference is recorded, the root starts empty: the fake has no registry), `COPY` takes
files from the context mount or context files and lands those under /workspace and
/home/agent. `RUN` and other instructions are recorded in the build log but not executed:
the fake has no root and no package manager (commands run on the host's /usr under
bubblewrap). Commands run as the test's user: the `setpriv` prefix the backend puts in
front of every command is dropped, since the fake cannot change uid; `prlimit` stays.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from modal_proto import api_pb2

from images.sandboxes import make_backend
from images.sandboxes.base import (
    WORKDIR,
    ImageRef,
    Limits,
    SandboxError,
    SandboxSpec,
    SnapshotRef,
)
from images.sandboxes.local import LocalSandbox
from images.sandboxes.overlay import chown_tree

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
HOME_DIR = "/home/agent"
OUTPUT_CAP = 64 << 20
CHUNK = 64 * 1024


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def task_id() -> str:
    return f"ta-{secrets.token_hex(8)}V"  # the V marks a V2 sandbox's task for the client


class FakeModalError(Exception):
    """A request the fake answers with an error status (the message is what Modal says)."""


@dataclass
class FakeExec:
    argv: list[str]
    workdir: str
    env: dict[str, str]
    timeout: int
    stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stdout: bytes = b""
    stderr: bytes = b""
    code: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class FakeSandbox:
    id: str
    task_id: str
    image_id: str
    sandbox: LocalSandbox
    definition: api_pb2.Sandbox
    execs: dict[str, FakeExec] = field(default_factory=dict)
    terminated: bool = False


class FakeModalWorld:
    """The state behind the fake's RPCs; every method runs on the server's event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend = make_backend("bwrap", root / "state")
        self.images: dict[str, ImageRef | SnapshotRef] = {}
        self.build_logs: dict[str, tuple[bool, list[str]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.mounts: dict[str, list[api_pb2.MountFile]] = {}
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.registry_refs: list[str] = []
        """Every `FROM <reference>` of a registry image a build asked for, in order."""
        self.dockerfiles: list[list[str]] = []
        """The Dockerfile commands of every image definition built."""
        self.snapshot_ttls: dict[str, int] = {}
        """Image id of each filesystem snapshot → the ttl asked for (-1: no expiry)."""
        self.created: list[api_pb2.Sandbox] = []
        """The definition of every sandbox created."""
        self.failing_step = ""
        """When set, a build whose Dockerfile commands contain it fails at that step, with
        the build log saying so (as an `apt-get install` of a missing package would)."""
        self.refuse: dict[str, tuple[int, str]] = {}
        """RPC name → (grpclib Status value, message) the fake answers with instead."""
        self.calls: list[str] = []
        self.unserved: list[str] = []

    # ------------------------------------------------------------ images

    def build(self, definition: api_pb2.Image) -> str:
        """Realise an image definition; returns its id (the log says how it went)."""
        image_id = new_id("im")
        log: list[str] = []
        commands = list(definition.dockerfile_commands)
        self.dockerfiles.append(commands)
        bases = {b.docker_tag: b.image_id for b in definition.base_images}
        source: ImageRef | SnapshotRef | None = None
        files: dict[str, bytes] = {}
        try:
            for line in commands:
                word, _, rest = line.strip().partition(" ")
                word = word.upper()
                if word == "FROM":
                    ref = rest.split()[0] if rest.split() else ""
                    if ref in bases:
                        source = self.images[bases[ref]]
                        log.append(f"FROM {ref} ({bases[ref]})")
                    else:
                        self.registry_refs.append(ref)
                        log.append(f"FROM {ref} (registry image: an empty root in the fake)")
                elif word == "COPY":
                    files.update(self._copy(definition, rest))
                    log.append(line)
                elif self.failing_step and self.failing_step in line:
                    log.append(line)
                    raise FakeModalError(f"build step `{line}` exited with status 100")
                else:
                    log.append(f"{line}  [recorded, not run by the fake]")
            image = self._materialise(image_id, source, files)
        except FakeModalError as exc:
            log.append(f"error: {exc}")
            self.build_logs[image_id] = (False, log)
            return image_id
        self.images[image_id] = image
        self.build_logs[image_id] = (True, log)
        return image_id

    def _copy(self, definition: api_pb2.Image, rest: str) -> dict[str, bytes]:
        """`COPY [--flags] src... dest` → {absolute destination path: content}."""
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if len(words) < 2:
            raise FakeModalError(f"COPY {rest}: needs a source and a destination")
        *sources, dest = words
        context: dict[str, bytes] = {f.filename: f.data for f in definition.context_files}
        if definition.context_mount_id:
            for mf in self.mounts.get(definition.context_mount_id, []):
                context[mf.filename.lstrip("/")] = self.blobs[mf.sha256_hex]
        out: dict[str, bytes] = {}
        for src in sources:
            prefix = src.strip("/").removeprefix(".").strip("/")
            for name, data in context.items():
                name = name.lstrip("/")
                if prefix and name != prefix and not name.startswith(prefix + "/"):
                    continue
                rel = name[len(prefix) :].lstrip("/") if prefix else name
                target = PurePosixPath(dest) / rel if rel else PurePosixPath(dest)
                out[str(target)] = data
        return out

    def _materialise(
        self, image_id: str, base: ImageRef | SnapshotRef | None, files: dict[str, bytes]
    ) -> ImageRef | SnapshotRef:
        if base is not None and not files:
            return base
        if isinstance(base, SnapshotRef):
            raise FakeModalError("the fake copies files onto an image, not onto a snapshot")
        image_dir = self.root / "images" / image_id
        root = image_dir / "root"
        if base is not None:
            shutil.copytree(Path(base.location) / "root", root, symlinks=True)
        (root / "workspace").mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            for mount, local in ((WORKDIR, "workspace"), (HOME_DIR, "home")):
                if path == mount or path.startswith(mount + "/"):
                    target = root / local / path[len(mount) :].lstrip("/")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        chown_tree(root, self.backend.owner)
        return ImageRef(
            id=image_id,
            repo="fake-modal",
            sha="0" * 40,
            backend=self.backend.name,
            location=str(image_dir),
            runtime=self.backend.runtime_version(),
            built_at=time.time(),
        )

    # ------------------------------------------------------------ sandboxes

    async def create_sandbox(self, definition: api_pb2.Sandbox, env: dict[str, str]) -> FakeSandbox:
        source = self.images.get(definition.image_id)
        if source is None:
            raise FakeModalError(f"Image {definition.image_id!r} not found")
        self.created.append(definition)
        env = {**dict(definition.environment_variables.contents), **env}
        limits = Limits(
            memory_mb=definition.resources.memory_mb or 2048,
            exec_timeout_s=float(definition.timeout_secs or 600),
            disk_mb=0,
            output_cap_bytes=OUTPUT_CAP,
        )
        spec = SandboxSpec(source=source, limits=limits, env=env, label="fake-modal")
        try:
            local = await self.backend.start(spec)
        except SandboxError as exc:
            raise FakeModalError(f"could not start the sandbox: {exc}") from exc
        sandbox = FakeSandbox(new_id("sb"), task_id(), definition.image_id, local, definition)
        self.sandboxes[sandbox.id] = sandbox
        return sandbox

    def by_task(self, task: str) -> FakeSandbox:
        for sandbox in self.sandboxes.values():
            if sandbox.task_id == task:
                if sandbox.terminated:
                    raise FakeModalError(f"task {task} has finished")
                return sandbox
        raise FakeModalError(f"no task {task}")

    async def snapshot(self, sandbox: FakeSandbox, ttl_seconds: int) -> str:
        snap = await sandbox.sandbox.snapshot()
        image_id = new_id("im")
        self.images[image_id] = snap
        self.snapshot_ttls[image_id] = ttl_seconds
        return image_id

    async def terminate(self, sandbox: FakeSandbox) -> None:
        if not sandbox.terminated:
            sandbox.terminated = True
            await sandbox.sandbox.terminate()

    async def close(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self.terminate(sandbox)

    # ------------------------------------------------------------ commands

    def start_exec(self, sandbox: FakeSandbox, exec_id: str, run: FakeExec) -> None:
        sandbox.execs[exec_id] = run
        if run.argv and run.argv[0] == FS_TOOLS:
            run.task = asyncio.ensure_future(self._fs_tool(sandbox, run))

    def begin(self, sandbox: FakeSandbox, run: FakeExec) -> None:
        """Run a command once its stdin is closed or its output is first asked for."""
        if run.task is None:
            run.task = asyncio.ensure_future(self._command(sandbox, run))

    async def _command(self, sandbox: FakeSandbox, run: FakeExec) -> None:
        argv = run.argv
        if argv and argv[0] == "setpriv" and "--" in argv:
            argv = argv[argv.index("--") + 1 :]  # the fake cannot change uid
        workdir = run.workdir or WORKDIR
        rel = PurePosixPath(workdir).relative_to(WORKDIR) if workdir.startswith(WORKDIR) else None
        try:
            if rel is None:
                raise SandboxError(f"the fake runs commands under {WORKDIR} only, not {workdir}")
            # The local backend hands output back as text; base64 keeps bytes (a git bundle)
            # intact on the way, with pipefail keeping the command's own exit code.
            result = await sandbox.sandbox.exec(
                ["bash", "-c", 'set -o pipefail; "$@" | base64 -w0', "fake-modal", *argv],
                cwd=str(rel),
                env=run.env,
                timeout=run.timeout or None,
                output_cap=OUTPUT_CAP,
                stdin=bytes(run.stdin) if run.stdin_closed.is_set() and run.stdin else None,
            )
            run.stdout, run.stderr = base64.b64decode(result.stdout), result.stderr.encode()
            run.code = 124 if result.timed_out else result.exit_code
        except SandboxError as exc:
            run.stderr, run.code = f"{exc}\n".encode(), 127
        finally:
            run.done.set()

    async def _fs_tool(self, sandbox: FakeSandbox, run: FakeExec) -> None:
        """Modal's file tool: `{"ReadFile": {"path": ...}}` / `{"WriteFile": {...}}`."""
        try:
            command = json.loads(run.argv[1])
            op, args = next(iter(command.items()))
            path = str(args["path"])
            if not path.startswith(WORKDIR + "/"):
                raise SandboxError(f"the fake's file tool serves {WORKDIR} only, not {path}")
            rel = path[len(WORKDIR) + 1 :]
            if op == "ReadFile":
                run.stdout = await sandbox.sandbox.read_file(rel, max_bytes=OUTPUT_CAP)
            elif op == "WriteFile":
                await run.stdin_closed.wait()
                await sandbox.sandbox.write_file(rel, bytes(run.stdin))
            else:
                raise SandboxError(f"the fake's file tool does not do {op}")
        except (SandboxError, ValueError, KeyError, StopIteration) as exc:
            run.stderr, run.code = f"{exc}\n".encode(), 1
        finally:
            run.done.set()
