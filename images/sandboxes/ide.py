"""VS Code in the browser: code-server run inside a local sandbox on its workspace, listening
only on a Unix socket in the sandbox's own /tmp, with no password (`--auth none`).

No password is needed because no one reaches the socket but the API's IDE proxy
(`app/api/ide_proxy.py`), which lets through only people who may open the session's IDE: the
sandbox's network namespace holds nothing but its own `lo`, code-server opens no TCP port, and
the host opens the socket file without following any link the sandbox may have placed (the
same check as the desktop's, `desktop.open_socket`).

code-server is one long command of the sandbox, so its memory, processes and files count
against the sandbox's limits, and it ends with the sandbox. What a person changes through it
is found by `edits`: the workspace's tree as git sees it, compared between two moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from images.sandboxes.base import WORKDIR, ExecResult, Sandbox, SandboxError
from images.sandboxes.desktop import open_socket
from images.sandboxes.desktop import supported as desktop_supported

SOCKET_DIR = ".nightshift-ide"
SOCKET_NAME = "ide.sock"
START_TIMEOUT_S = 60.0
NOT_INSTALLED = 127
MAX_FILES = 200
"""Most file names one `edits` call reports (the event says how many more there were)."""

LAUNCH = f"""
command -v "$1" >/dev/null 2>&1 || {{
  echo "$1 is not installed in this sandbox's environment" >&2; exit {NOT_INSTALLED}; }}
dir=/tmp/{SOCKET_DIR}
mkdir -p "$dir/data" "$dir/extensions" "$dir/xdg" || exit 1
chmod 700 "$dir"
rm -f "$dir/{SOCKET_NAME}"
export XDG_CONFIG_HOME="$dir/xdg" XDG_DATA_HOME="$dir/xdg"
exec "$@" --auth none --socket "$dir/{SOCKET_NAME}" --disable-telemetry --disable-update-check \\
  --disable-workspace-trust --ignore-last-opened --user-data-dir "$dir/data" \\
  --extensions-dir "$dir/extensions" {WORKDIR}
"""

# The workspace's tree as git would commit it, through an index of our own (the workspace's
# index is the agent's), and the files that differ from the tree given as $1.
EDITS = f"""
export GIT_INDEX_FILE=/tmp/{SOCKET_DIR}/index
[ -f "$GIT_INDEX_FILE" ] || cp .git/index "$GIT_INDEX_FILE" 2>/dev/null
git add --all . >/dev/null || exit 1
tree=$(git write-tree) || exit 1
echo "$tree"
if [ -n "$1" ] && [ "$1" != "$tree" ]; then git diff-tree -r --name-only "$1" "$tree"; fi
"""
TREE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


class IdeUnavailable(SandboxError):
    """This sandbox cannot run the IDE: its backend, or a failed start."""


class IdeNotInstalled(IdeUnavailable):
    """The sandbox's environment has no code-server (`make ide` installs it on the host)."""


@dataclass
class Ide:
    """code-server running in one sandbox."""

    sandbox: Sandbox
    tmp: Path
    task: asyncio.Task[ExecResult]
    started_at: float = field(default_factory=time.time)
    ready_s: float = 0.0
    """Seconds from the start to the socket answering."""

    @property
    def sandbox_id(self) -> str:
        return self.sandbox.id

    @property
    def alive(self) -> bool:
        return not self.task.done()

    def connect(self) -> socket.socket:
        """A new connection to code-server (blocking; the socket is local and listening)."""
        if not self.alive:
            raise IdeUnavailable("the IDE has stopped")
        return open_socket(self.tmp, SOCKET_DIR, SOCKET_NAME)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SandboxError):
            await self.task


def supported(sandbox: Sandbox) -> str:
    """Why `sandbox` cannot run the IDE, or "" when it can (the desktop's rule)."""
    return desktop_supported(sandbox, "run the IDE")


async def start_ide(sandbox: Sandbox, command: str, timeout: float = START_TIMEOUT_S) -> Ide:
    """Start `command` (code-server, or what stands in for it) in `sandbox` on its workspace
    and wait until its socket answers; call on the loop the sandbox's commands run on."""
    reason = supported(sandbox)
    if reason:
        raise IdeUnavailable(reason)
    argv = shlex.split(command)
    if not argv:
        raise IdeUnavailable("NIGHTSHIFT_IDE_COMMAND is empty")
    tmp = sandbox.tmp
    if tmp is None:
        raise IdeUnavailable("this sandbox has no /tmp on this host for the IDE's socket")
    lifetime = (sandbox.deadline or time.monotonic() + 4 * 3600.0) - time.monotonic()
    began = time.monotonic()
    task = asyncio.ensure_future(
        sandbox.exec(
            ["/bin/sh", "-c", LAUNCH, "sh", *argv],
            timeout=max(lifetime, 1.0),
            output_cap=16384,
        )
    )
    # Its end (the sandbox terminated, a limit) is read by `alive`; nothing else awaits it.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    ide = Ide(sandbox, tmp, task)
    deadline = began + timeout
    while time.monotonic() < deadline and not task.done():
        try:
            probe = await asyncio.to_thread(open_socket, tmp, SOCKET_DIR, SOCKET_NAME)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        probe.close()
        ide.ready_s = time.monotonic() - began
        return ide
    if not task.done():
        await ide.stop()
        raise IdeUnavailable(f"the IDE did not start within {timeout:g} s")
    try:
        result = task.result()
    except SandboxError as exc:
        raise IdeUnavailable(f"the IDE could not start: {exc}") from exc
    detail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    if result.exit_code == NOT_INSTALLED:
        raise IdeNotInstalled(detail or f"{argv[0]} is not installed in this sandbox")
    raise IdeUnavailable(f"the IDE exited with status {result.exit_code}: {detail or 'no output'}")


async def edits(sandbox: Sandbox, since: str) -> tuple[str, list[str]]:
    """The workspace's tree now, and the files that differ from tree `since` ("" for none)."""
    if since and not TREE.fullmatch(since):
        raise ValueError(f"not a tree id: {since!r}")
    result = await sandbox.exec(["/bin/sh", "-c", EDITS, "sh", since], timeout=120)
    lines = result.stdout.splitlines()
    if result.exit_code != 0 or not lines or not TREE.fullmatch(lines[0].strip()):
        raise SandboxError(
            f"the workspace's changes could not be read: {(result.stderr or result.stdout)[-300:]}"
        )
    return lines[0].strip(), [line for line in lines[1:] if line]
