"""The embedded default forge: git repositories on this machine (a work tree or a bare repo).

Pull requests on this forge are records kept by the control plane; this module only moves
commits: pushes, and the merge of a reviewed branch into its base. A merge is computed with
`git merge-tree --write-tree` and `git commit-tree`, which write objects and no files, so the
person's checked-out work tree is only ever changed as `git merge --ff-only` would change it,
and only when the base branch is checked out there and the tree is clean.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path

from integrations.forge.base import ZERO_SHA, ForgeError, fetch_bundle, git, git_env

NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
"""A merge run by the server must not run the repository's hooks on the host."""


class MergeConflict(ForgeError):
    """The branch does not merge cleanly into its base; `files` are the conflicting paths."""

    def __init__(self, message: str, files: list[str]) -> None:
        super().__init__(message)
        self.files = files


class BaseCheckedOut(ForgeError):
    """The base branch is checked out in a work tree whose changes a merge could disturb."""


@dataclass(frozen=True)
class MergeResult:
    sha: str
    """The base branch's new tip."""
    merge_base: str
    fast_forward: bool
    updated_worktree: str | None
    """The work tree where the base branch is checked out and was fast-forwarded, if any."""


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author_name: str
    author_email: str
    timestamp: int
    message: str


async def _git_rc(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run host-side git and return (exit code, stdout, stderr) when a non-zero code is an
    answer (a conflict) rather than a failure."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _branch_exists(repo: Path, branch: str) -> bool:
    rc, _, _ = await _git_rc("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo)
    return rc == 0


async def _worktree_of(repo: Path, branch: str) -> Path | None:
    """The work tree that has `branch` checked out, if any (none in a bare repository)."""
    listing = await git("worktree", "list", "--porcelain", cwd=repo)
    path: str | None = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree ") :]
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return Path(path)
    return None


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
        if expected_old and not await _branch_exists(repo, branch):
            # Deleted when its pull request was merged or closed: a follow-up's push makes it
            # again (nothing of anyone's can be overwritten on a branch that is not there).
            expected_old = None
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

    async def commits(self, url: str, base: str, head: str) -> list[CommitInfo]:
        """Commits reachable from `head` and not from `base` (shas or branch names), oldest
        first."""
        repo = resolve_local_repo(url)
        out = await git(
            "log",
            "--reverse",
            "--max-count=500",
            "--format=%H%x1f%an%x1f%ae%x1f%at%x1f%B%x1e",
            f"{base}..{head}",
            "--",
            cwd=repo,
        )
        found = []
        for record in out.split("\x1e"):
            fields = record.strip("\n").split("\x1f")
            if len(fields) == 5:
                sha, name, email, ts, message = fields
                found.append(CommitInfo(sha, name, email, int(ts), message.strip()))
        return found

    async def merge_base(self, url: str, base: str, head: str) -> str:
        repo = resolve_local_repo(url)
        return (await git("merge-base", base, head, cwd=repo)).strip()

    async def merge(
        self, url: str, base: str, head_sha: str, message: str, identity: tuple[str, str]
    ) -> MergeResult:
        """Merge `head_sha` into branch `base`: a fast-forward when `base` is an ancestor of
        it, else a merge commit by `identity` (name, email). Raises MergeConflict (nothing
        changed) when the trees conflict, BaseCheckedOut when `base` is checked out in a work
        tree with uncommitted changes, ForgeError when `base` moved meanwhile."""
        repo = resolve_local_repo(url)
        base_sha = await self.tip(url, base)
        merge_base = (await git("merge-base", base_sha, head_sha, cwd=repo)).strip()
        if merge_base == head_sha:
            raise ForgeError(f"{base} already contains {head_sha[:12]}: nothing to merge")
        fast_forward = merge_base == base_sha
        if fast_forward:
            new = head_sha
        else:
            rc, out, err = await _git_rc(
                "merge-tree",
                "--write-tree",
                "--name-only",
                "--no-messages",
                base_sha,
                head_sha,
                cwd=repo,
            )
            if rc == 1:
                files = [f for f in out.splitlines()[1:] if f]
                raise MergeConflict(
                    f"the branch conflicts with {base} in {', '.join(files) or 'some files'}; "
                    "nothing was merged",
                    files,
                )
            if rc != 0:
                raise ForgeError(f"git merge-tree failed: {err.strip()}")
            tree = out.splitlines()[0].strip()
            name, email = identity
            env = {
                "GIT_AUTHOR_NAME": name,
                "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name,
                "GIT_COMMITTER_EMAIL": email,
            }
            new = (
                await git(
                    "commit-tree",
                    tree,
                    "-p",
                    base_sha,
                    "-p",
                    head_sha,
                    "-m",
                    message,
                    cwd=repo,
                    env=env,
                )
            ).strip()
        worktree = await _worktree_of(repo, base)
        if worktree is None:
            try:
                await git("update-ref", f"refs/heads/{base}", new, base_sha, cwd=repo)
            except ForgeError as exc:
                raise ForgeError(f"{base} moved while merging; try again ({exc})") from exc
        else:
            await _fast_forward_checkout(worktree, base, base_sha, new)
        return MergeResult(new, merge_base, fast_forward, str(worktree) if worktree else None)

    async def delete_branch(self, url: str, branch: str, expected: str) -> bool:
        """Delete `branch` if it still points at `expected` and is checked out nowhere; True
        when it is gone."""
        repo = resolve_local_repo(url)
        if await _worktree_of(repo, branch) is not None:
            return False
        rc, _, _ = await _git_rc("update-ref", "-d", f"refs/heads/{branch}", expected, cwd=repo)
        return rc == 0


async def _fast_forward_checkout(worktree: Path, base: str, base_sha: str, new: str) -> None:
    """Move a checked-out base branch as `git merge --ff-only` would: only from a clean work
    tree still at `base_sha`, so no change of the person's is ever overwritten or mixed in."""
    head = (await git("rev-parse", "HEAD", cwd=worktree)).strip()
    status = await git("status", "--porcelain", "--untracked-files=no", cwd=worktree)
    if head != base_sha or status.strip():
        raise BaseCheckedOut(
            f"{base} is checked out in {worktree} with uncommitted changes; commit or stash "
            "them (or check out another branch there), then merge again. Nothing was merged."
        )
    await git(*NO_HOOKS, "merge", "--ff-only", "--quiet", new, cwd=worktree)
