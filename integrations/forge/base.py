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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from integrations.errors import IntegrationsError


class ForgeError(IntegrationsError):
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


def git_env() -> dict[str, str]:
    """The whole environment of a host-side git: `GIT_ENV`, the host's PATH, no home."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.devnull, **GIT_ENV}


def _output_file(name: str) -> BinaryIO:
    """An anonymous file for a child's output: in memory where the kernel has memfd, else a
    temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return open(os.memfd_create(name, os.MFD_CLOEXEC), "w+b")
    return tempfile.TemporaryFile()


async def git(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: BinaryIO | None = None,
) -> str:
    """Run host-side git and return stdout; raise ForgeError with git's own message. `stdin`
    is an open file the process reads from its current offset."""
    full_env = {**git_env(), **(env or {})}
    # Output goes to files, not pipes: asyncio waits for every holder of a pipe to close it
    # before a process counts as finished, and git's helpers (upload-pack, remote helpers)
    # inherit them, so a cancelled clone could otherwise outlive its caller by many seconds.
    # Files in memory: a file on disk costs the host's filesystem an inode each time.
    with _output_file("git-out") as out, _output_file("git-err") as err:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
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


FSCK_ENV = {
    "GIT_CONFIG_COUNT": "3",
    "GIT_CONFIG_KEY_0": "transfer.fsckObjects",
    "GIT_CONFIG_VALUE_0": "true",
    "GIT_CONFIG_KEY_1": "fetch.fsckObjects",
    "GIT_CONFIG_VALUE_1": "true",
    "GIT_CONFIG_KEY_2": "receive.fsckObjects",
    "GIT_CONFIG_VALUE_2": "true",
}
"""Every object a host-side git receives is checked: trees with `.git`, `..` or other entries
git refuses (they would write outside a work tree on checkout) fail the transfer."""


@dataclass(frozen=True)
class BundleHeader:
    prerequisites: list[str]
    """Commits the receiving repository must have already."""
    refs: dict[str, str]
    """Ref name -> sha of what the bundle carries."""
    pack_offset: int
    """Where the pack data starts in the file."""


def read_bundle_header(bundle: Path) -> BundleHeader:
    """The header of a git bundle (v2 or v3); ForgeError when it is not one."""
    with bundle.open("rb") as fh:
        start = fh.read(1 << 20)
    end = start.find(b"\n\n")
    lines = start[: max(end, 0)].decode(errors="replace").splitlines()
    if end < 0 or not lines or not lines[0].startswith("# v") or "git bundle" not in lines[0]:
        raise ForgeError(f"{bundle.name} is not a git bundle")
    prerequisites, refs = [], {}
    for line in lines[1:]:
        if line.startswith("-"):
            prerequisites.append(line[1:].split()[0])
        elif not line.startswith("@") and " " in line:
            sha, name = line.split(" ", 1)
            refs[name] = sha
    return BundleHeader(prerequisites, refs, end + 2)


async def fetch_bundle(repo: Path, bundle: Path, branch: str, ref: str) -> str:
    """Fetch `branch` of a sandbox's `bundle` into `ref` of `repo`, checking every new object
    as `transfer.fsckObjects` does; returns the fetched sha.

    git before 2.46 does not check what it fetches from a bundle, whatever the settings say.
    So the bundle's pack is indexed with `index-pack --strict` (git's fsck on receive) in a
    scratch repository that borrows `repo`'s objects for the prerequisites, and only then
    fetched into `repo` over git's ordinary transport, with the fsck settings on. A refused
    object never reaches `repo`, not even as a temporary pack: the scratch repository is
    deleted either way.
    """
    header = read_bundle_header(bundle)
    sha = header.refs.get(f"refs/heads/{branch}")
    if sha is None:
        raise ForgeError(f"the bundle does not carry branch {branch}")
    objects = (
        await git("rev-parse", "--path-format=absolute", "--git-path", "objects", cwd=repo)
    ).strip()
    with tempfile.TemporaryDirectory(prefix="nightshift-bundle-") as scratch:
        quarantine = Path(scratch) / "quarantine.git"
        await git("init", "--quiet", "--bare", str(quarantine))
        (quarantine / "objects" / "info" / "alternates").write_text(objects + "\n")
        with bundle.open("rb") as pack:
            pack.seek(header.pack_offset)
            try:
                await git(
                    "index-pack", "--stdin", "--fix-thin", "--strict", cwd=quarantine, stdin=pack
                )
            except ForgeError as exc:
                raise ForgeError(
                    "the pushed commits were refused by git's object checks (fsck) and nothing "
                    "was pushed; a tree with a `.git` or `..` entry, or another malformed "
                    f"object: {exc}"
                ) from exc
        incoming = "refs/heads/incoming"
        await git("update-ref", incoming, sha, cwd=quarantine)
        await git(
            "fetch", "--quiet", "--no-tags", str(quarantine), f"{incoming}:{ref}",
            cwd=repo, env=FSCK_ENV,
        )  # fmt: skip
    return (await git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=repo)).strip()
