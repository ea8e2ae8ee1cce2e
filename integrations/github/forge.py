"""The GitHub forge: clone, fetch and push on the host with the App's installation token.

The token travels only in the environment of the host's own `git` process, as an
`http.<origin>/.extraHeader` (Basic `x-access-token`, as GitHub documents for Apps), so it never
appears in a command line, a URL, a `.git/config`, an image or a sandbox. Each repository has a
bare mirror in the data dir: images are cloned from it (single branch, no credentials, the
remote renamed) and pushes go through it from the bundle a sandbox produced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from integrations.forge.base import ForgeError, fetch_bundle, git, read_bundle_header
from integrations.github.app import GitHubApp, InstallationToken, RepoInfo, split_repo
from integrations.github.errors import GitHubError

_AUTH_FAILURE = re.compile(
    r"Authentication failed|returned error: 40[13]|could not read Username|terminal prompts disabled"
)
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """An exclusive lock on `path` (a mirror) across threads and processes on this host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class GitHubForge:
    kind = "github"

    def __init__(self, app: GitHubApp, mirrors: Path) -> None:
        self.app = app
        self.mirrors = mirrors

    # ------------------------------------------------------------ plumbing

    def _repo(self, url: str) -> str:
        try:
            owner, name = split_repo(url)
        except GitHubError as exc:
            raise ForgeError(str(exc)) from exc
        return f"{owner}/{name}"

    def mirror_path(self, repo: str) -> Path:
        owner, name = split_repo(repo)
        return self.mirrors / f"{owner.lower()}--{name.lower()}.git"

    @staticmethod
    def auth_env(clone_url: str, token: str) -> dict[str, str]:
        """Environment for one host-side git process: the token as a header for that origin."""
        url = httpx.URL(clone_url)
        origin = str(url.copy_with(raw_path=b"/", query=None, fragment=None))
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{origin}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    async def _call(self, fn: Callable[[], object]) -> object:
        try:
            return await asyncio.to_thread(fn)
        except GitHubError as exc:
            raise ForgeError(str(exc)) from exc

    async def _token(self, repo: str) -> InstallationToken:
        token = await self._call(lambda: self.app.token(repo))
        assert isinstance(token, InstallationToken)
        return token

    async def _clone_url(self, repo: str) -> str:
        info = await self._call(lambda: self.app.repo_info(repo))
        assert isinstance(info, RepoInfo)
        return str(info.clone_url)

    async def _remote(self, repo: str, args: Callable[[str], list[str]], cwd: Path | None) -> str:
        """Run git against the repository's remote with a current installation token; a token
        GitHub refuses (revoked early) is replaced once."""
        clone_url = await self._clone_url(repo)
        for attempt in (1, 2):
            token = await self._token(repo)
            try:
                return await git(
                    *args(clone_url), cwd=cwd, env=self.auth_env(clone_url, token.token)
                )
            except ForgeError as exc:
                if attempt == 1 and _AUTH_FAILURE.search(str(exc)):
                    self.app.invalidate(token)
                    continue
                raise ForgeError(f"{repo}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _ensure_mirror(self, mirror: Path) -> None:
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            await git("init", "--quiet", "--bare", str(mirror))

    async def _has(self, mirror: Path, sha: str) -> bool:
        try:
            await git("cat-file", "-e", f"{sha}^{{commit}}", cwd=mirror)
        except ForgeError:
            return False
        return True

    async def _fetch_branch(self, repo: str, branch: str, mirror: Path) -> str:
        await self._ensure_mirror(mirror)
        refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
        try:
            await self._remote(
                repo, lambda u: ["fetch", "--quiet", "--tags", "--", u, refspec], mirror
            )
        except ForgeError as exc:
            if "couldn't find remote ref" in str(exc):
                raise ForgeError(f"{repo}: branch {branch!r} does not exist on GitHub") from exc
            raise
        return (await git("rev-parse", f"refs/heads/{branch}", cwd=mirror)).strip()

    async def _fetch_commits(self, repo: str, shas: list[str], mirror: Path) -> None:
        missing = [sha for sha in shas if not await self._has(mirror, sha)]
        if not missing:
            return
        try:
            await self._remote(
                repo, lambda u: ["fetch", "--quiet", "--no-tags", "--", u, *missing], mirror
            )
        except ForgeError as exc:
            raise ForgeError(
                f"{repo}: commits {', '.join(s[:10] for s in missing)} are not on GitHub any more "
                f"(was a branch force-pushed?): {exc}"
            ) from exc

    # ------------------------------------------------------------ the Forge port

    async def tip(self, url: str, branch: str) -> str:
        repo = self._repo(url)
        out = await self._remote(
            repo, lambda u: ["ls-remote", "--heads", "--", u, f"refs/heads/{branch}"], None
        )
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        raise ForgeError(f"{repo}: branch {branch!r} does not exist on GitHub")

    async def clone(self, url: str, branch: str, dest: Path) -> str:
        repo = self._repo(url)
        mirror = self.mirror_path(repo)
        async with locked(mirror):
            await self._fetch_branch(repo, branch, mirror)
            try:
                await git(
                    "clone",
                    "--quiet",
                    "--no-hardlinks",
                    "--single-branch",
                    "--branch",
                    branch,
                    "--",
                    str(mirror),
                    str(dest),
                )
            except ForgeError as exc:
                raise ForgeError(f"cloning {repo} ({branch}) failed: {exc}") from exc
        # The sandbox learns neither host paths nor where the remote lives.
        await git("remote", "set-url", "origin", f"nightshift:{repo}", cwd=dest)
        return (await git("rev-parse", "HEAD", cwd=dest)).strip()

    async def fetch(self, url: str, branch: str, mirror: Path) -> str:
        repo = self._repo(url)
        async with locked(mirror):
            return await self._fetch_branch(repo, branch, mirror)

    async def push_bundle(
        self, url: str, bundle: Path, branch: str, expected_old: str | None
    ) -> str:
        repo = self._repo(url)
        mirror = self.mirror_path(repo)
        incoming = f"refs/nightshift/incoming/{secrets.token_hex(6)}"
        async with locked(mirror):
            await self._ensure_mirror(mirror)
            await self._fetch_commits(repo, read_bundle_header(bundle).prerequisites, mirror)
            try:
                new = await fetch_bundle(mirror, bundle, branch, incoming)
                lease = f"--force-with-lease=refs/heads/{branch}:{expected_old or ''}"
                try:
                    await self._remote(
                        repo,
                        lambda u: ["push", "--quiet", lease, "--", u, f"{new}:refs/heads/{branch}"],
                        mirror,
                    )
                except ForgeError as exc:
                    if "stale info" in str(exc) or "fetch first" in str(exc):
                        raise ForgeError(
                            f"branch {branch} moved on GitHub since the last push; refusing to "
                            f"overwrite it ({exc})"
                        ) from exc
                    raise
                return new
            finally:
                with contextlib.suppress(ForgeError):
                    await git("update-ref", "-d", incoming, cwd=mirror)

    async def diff(self, url: str, base: str, head: str) -> str:
        repo = self._repo(url)
        if not _SHA.match(head):
            raise ForgeError(f"{head!r} is not a commit sha")
        mirror = self.mirror_path(repo)
        async with locked(mirror):
            await self._fetch_branch(repo, base, mirror)
            await self._fetch_commits(repo, [head], mirror)
            return await git(
                "diff", "--no-color", "--no-ext-diff", f"refs/heads/{base}...{head}", cwd=mirror
            )
