"""The forge port: where repositories live and branches are pushed.

Every operation runs on the host, outside any sandbox, and may use credentials that must
never reach one. Implementations: `local` (git repositories on this machine) and `github`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Protocol


class ForgeError(Exception):
    """A git host refused or failed an operation; the message says which and why."""


class Forge(Protocol):
    kind: str

    async def tip(self, url: str, branch: str) -> str:
        """The commit sha at the tip of `branch`."""
        ...

    async def clone(self, url: str, branch: str, dest: Path) -> str:
        """Clone `branch` into `dest` (a new directory); returns the checked-out sha."""
        ...

    async def fetch(self, url: str, branch: str, mirror: Path) -> str:
        """Update a bare mirror's `branch` from the forge; returns its sha."""
        ...

    async def push_bundle(
        self, url: str, bundle: Path, branch: str, expected_old: str | None
    ) -> str:
        """Push `branch` from a git bundle; refuses unless the remote is at `expected_old`."""
        ...

    async def diff(self, url: str, base: str, head: str) -> str:
        """Unified diff of `head` against its merge base with `base`."""
        ...


ZERO_SHA = "0" * 40

# Git run by the host must never read configuration it did not write.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "LANG": "C.UTF-8",
}


async def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run host-side git and return stdout; raise ForgeError with git's own message."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.devnull, **GIT_ENV}
    full_env.update(env or {})
    # Output goes to files, not pipes: asyncio waits for every holder of a pipe to close it
    # before a process counts as finished, and git's helpers (upload-pack, remote helpers)
    # inherit them, so a cancelled clone could otherwise outlive its caller by many seconds.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            await proc.wait()
        except asyncio.CancelledError:
            # A cancelled caller (a stopped session's sync) must not leave git or its
            # helpers running.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise ForgeError(f"git {args[0]} failed: {stderr.decode(errors='replace').strip()}")
    return stdout.decode(errors="replace")
