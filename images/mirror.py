"""Host-owned bare mirrors of each repo's base branch.

The host runs git only in directories it created and no sandbox ever touches: a mirror is
where the base tip is fetched (through the forge port), where `.nightshift.toml` is read
without a checkout, and where the bundle that brings a started sandbox up to date is made.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from images.devcontainer import (
    DEVCONTAINER_FILE,
    Devcontainer,
    DevcontainerError,
    parse_devcontainer,
)
from images.devcontainer import MAX_BYTES as DEVCONTAINER_MAX_BYTES
from images.spec import SPEC_FILE, SPEC_FILE_MAX_BYTES, RepoSpec, SpecFile, SpecFileError
from images.spec_file import parse_spec_file
from integrations.forge.base import Forge, ForgeError, git


class Mirrors:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}
        self._fetched: dict[tuple[str, str, str], tuple[float, str]] = {}
        """(repo, url, base) -> when the last fetch that succeeded began, and the tip it got."""

    def path(self, spec: RepoSpec) -> Path:
        return self.root / f"{spec.slug()}.git"

    async def update(self, spec: RepoSpec, forge: Forge) -> str:
        """Fetch the base branch into the mirror; returns the tip sha.

        Single-flight: callers that asked while a fetch was queued behind the lock share the
        next fetch that begins after they asked (its tip is at least as new as the one they
        would have fetched themselves), so a burst of sessions on one repo costs a couple of
        fetches instead of one each, queued one after the other.
        """
        asked = time.monotonic()
        key = (spec.name, spec.url, spec.base)
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            last = self._fetched.get(key)
            if last is not None and last[0] >= asked:
                return last[1]
            began = time.monotonic()
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                tip = await forge.fetch(spec.url, spec.base, self.path(spec))
            except ForgeError:
                # Another process may hold a ref lock in the same mirror; one retry settles it.
                await asyncio.sleep(0.2)
                tip = await forge.fetch(spec.url, spec.base, self.path(spec))
            self._fetched[key] = (began, tip)
            return tip

    async def has_commit(self, spec: RepoSpec, sha: str) -> bool:
        try:
            await git("cat-file", "-e", f"{sha}^{{commit}}", cwd=self.path(spec))
        except ForgeError:
            return False
        return True

    async def spec_file(self, spec: RepoSpec, sha: str) -> SpecFile | None:
        """The parsed `.nightshift.toml` at `sha`, None when there is none.

        Raises SpecFileError when it is malformed (or not a regular file).
        """
        listing = await git("ls-tree", "-l", sha, "--", SPEC_FILE, cwd=self.path(spec))
        if not listing.strip():
            return None
        meta, _, _name = listing.partition("\t")
        mode, kind, oid, size = meta.split()
        if kind != "blob" or mode not in ("100644", "100755"):
            raise SpecFileError("must be a regular file (it is a symlink or a directory)")
        if size.isdigit() and int(size) > SPEC_FILE_MAX_BYTES:
            raise SpecFileError(f"is larger than {SPEC_FILE_MAX_BYTES} bytes")
        text = await git("cat-file", "blob", oid, cwd=self.path(spec))
        return parse_spec_file(text)

    async def devcontainer(self, spec: RepoSpec, sha: str) -> Devcontainer | None:
        """The parsed `.devcontainer/devcontainer.json` at `sha`, None when there is none."""
        listing = await git("ls-tree", "-l", sha, "--", DEVCONTAINER_FILE, cwd=self.path(spec))
        if not listing.strip():
            return None
        meta, _, _name = listing.partition("\t")
        mode, kind, oid, size = meta.split()
        if kind != "blob" or mode not in ("100644", "100755"):
            raise DevcontainerError("must be a regular file (it is a symlink or a directory)")
        if size.isdigit() and int(size) > DEVCONTAINER_MAX_BYTES:
            raise DevcontainerError(f"is larger than {DEVCONTAINER_MAX_BYTES} bytes")
        text = await git("cat-file", "blob", oid, cwd=self.path(spec))
        return parse_devcontainer(text)

    async def bundle(self, spec: RepoSpec, have: str, dest: Path) -> bool:
        """Write a bundle of the base branch's commits missing from `have` into `dest`.

        Returns False when there is nothing to bring (`have` is the tip). When `have` is
        unknown to the mirror (history rewritten), the bundle carries the whole branch.
        """
        mirror = self.path(spec)
        ref = f"refs/heads/{spec.base}"
        tip = (await git("rev-parse", ref, cwd=mirror)).strip()
        if tip == have:
            return False
        known = await self.has_commit(spec, have)
        if known:
            try:
                await git("merge-base", "--is-ancestor", tip, have, cwd=mirror)
                return False  # `have` already contains the tip
            except ForgeError:
                pass
        revs = [ref, f"^{have}"] if known else [ref]
        await git("bundle", "create", "--quiet", str(dest), *revs, cwd=mirror)
        return True
