"""The embedded default forge: git repositories on this machine (a work tree or a bare repo).

Pull requests on this forge are records kept by the control plane; this module only moves
commits.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from integrations.forge.base import ZERO_SHA, ForgeError, fetch_bundle, git


def resolve_local_repo(path: str) -> Path:
    """Absolute path of a local git repository, or ForgeError saying why it is not one."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ForgeError(f"{path}: no such directory")
    if not ((p / ".git").exists() or ((p / "HEAD").is_file() and (p / "objects").is_dir())):
        raise ForgeError(f"{path}: not a git repository (no .git, not a bare repository)")
    return p


class LocalForge:
    kind = "local"

    async def tip(self, url: str, branch: str) -> str:
        repo = resolve_local_repo(url)
        out = await git(
            "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", cwd=repo
        )
        sha = out.strip()
        if not sha:
            raise ForgeError(f"{url}: branch {branch!r} does not exist")
        return sha

    async def clone(self, url: str, branch: str, dest: Path) -> str:
        repo = resolve_local_repo(url)
        try:
            await git(
                "clone", "--quiet", "--no-hardlinks", "--branch", branch, "--", str(repo), str(dest)
            )
        except ForgeError as exc:
            raise ForgeError(f"cloning {url} ({branch}) failed: {exc}") from exc
        # The sandbox must not learn host paths; the remote is re-pointed at a neutral name.
        await git("remote", "set-url", "origin", f"nightshift:{repo.name}", cwd=dest)
        return (await git("rev-parse", "HEAD", cwd=dest)).strip()

    async def fetch(self, url: str, branch: str, mirror: Path) -> str:
        repo = resolve_local_repo(url)
        if not mirror.exists():
            await git("init", "--quiet", "--bare", str(mirror))
        await git(
            "fetch",
            "--quiet",
            "--no-tags",
            str(repo),
            f"+refs/heads/{branch}:refs/heads/{branch}",
            cwd=mirror,
        )
        return (await git("rev-parse", f"refs/heads/{branch}", cwd=mirror)).strip()

    async def push_bundle(
        self, url: str, bundle: Path, branch: str, expected_old: str | None
    ) -> str:
        repo = resolve_local_repo(url)
        incoming = f"refs/nightshift-incoming/{secrets.token_hex(6)}"
        new = await fetch_bundle(repo, bundle, branch, incoming)
        try:
            try:
                await git(
                    "update-ref", f"refs/heads/{branch}", new, expected_old or ZERO_SHA, cwd=repo
                )
            except ForgeError as exc:
                raise ForgeError(
                    f"branch {branch} moved on the forge since the last push; refusing to "
                    f"overwrite it ({exc})"
                ) from exc
            return new
        finally:
            await git("update-ref", "-d", incoming, cwd=repo)

    async def diff(self, url: str, base: str, head: str) -> str:
        repo = resolve_local_repo(url)
        return await git("diff", "--no-color", "--no-ext-diff", f"{base}...{head}", cwd=repo)
