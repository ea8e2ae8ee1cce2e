"""Finishing a prompt: commit inside the sandbox as the person who asked, carry the commits out
as a git bundle, and push them from the host. No credential ever enters the sandbox.

The bundle is streamed to a file on the host, never held in memory, and is capped
(`NIGHTSHIFT_MAX_PUSH_MB`): a push over the cap fails naming the biggest files it carries.
What the sandbox's git says about sizes is only used for that message and an early refusal;
the cap itself is enforced on the bytes that leave the sandbox.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.sandbox_git import sandbox_git
from images.sandboxes.base import FileTooLarge, Sandbox, SandboxError
from integrations.forge.base import Forge
from workers.errors import WorkersError
from workers.events import Author

BUNDLE_PATH = ".git/nightshift-push.bundle"
MB = 1024 * 1024
BIGGEST = 5
LISTING_CAP = 16 * MB
# Sizes of every object the push carries: each object's size on disk (compressed, what the
# bundle will roughly weigh) is summed, and the biggest blobs are kept with their paths. Only
# `git` runs, as argv: on a declared image without git (or sh, awk, sort) the platform's git
# still does, and the sandbox's image is never asked for anything else.
CHECK_FORMAT = "--batch-check=%(objecttype) %(objectsize:disk) %(objectsize) %(rest)"


class GitOpsError(WorkersError):
    code = "git_error"


class PushTooLarge(GitOpsError):
    code = "push_too_large"


@dataclass(frozen=True)
class PushSize:
    disk_bytes: int
    """Compressed size of every object in the push: about what its bundle weighs."""
    biggest: list[tuple[str, int]]
    """The biggest files (path, bytes) in the pushed commits, biggest first."""

    def describe(self) -> str:
        return ", ".join(f"{path} ({_mb(size)})" for path, size in self.biggest) or "none"


_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
"""A full commit id (SHA-1 or SHA-256), as the sandbox's git must print it."""


def checked_sha(text: str) -> str:
    """`text` as a full commit id; what the sandbox printed is not trusted to be one."""
    sha = text.strip()
    if not _SHA.fullmatch(sha):
        raise GitOpsError(f"the sandbox's git gave {sha[:80]!r} where a commit id belongs")
    return sha


@dataclass(frozen=True)
class TreeState:
    """The work tree as one `git status` tells it."""

    head: str
    """The commit HEAD points at."""
    dirty: bool
    """Something is changed, added or removed (untracked files count)."""


@dataclass(frozen=True)
class Committed:
    sha: str
    message: str
    co_authors: list[str]


def commit_message(
    title: str, summary: str, author: Author, others: list[Author]
) -> tuple[str, list[str]]:
    seen = {author.email.lower()}
    trailers = []
    for other in others:
        if other.email.lower() not in seen:
            seen.add(other.email.lower())
            trailers.append(f"Co-authored-by: {other.name} <{other.email}>")
    title = " ".join(title.split())[:72] or "Changes from Nightshift"
    body = summary.strip()
    parts = [title]
    if body and body != title:
        parts.append(body)
    if trailers:
        parts.append("\n".join(trailers))
    return "\n\n".join(parts) + "\n", trailers


async def _git(sandbox: Sandbox, *args: str, env: dict[str, str] | None = None) -> str:
    return await sandbox_git(sandbox, *args, error=GitOpsError, env=env)


async def head_sha(sandbox: Sandbox) -> str:
    return checked_sha(await _git(sandbox, "rev-parse", "HEAD"))


async def tree_state(sandbox: Sandbox) -> TreeState:
    """HEAD and whether anything changed, from one command in the sandbox: each command is a
    new sandbox process tree (`bwrap`), so the two answers are asked for together."""
    status = await _git(
        sandbox,
        "status",
        "--porcelain=v2",
        "--branch",
        "--no-ahead-behind",
        "--untracked-files=all",
    )
    head: str | None = None
    dirty = False
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            head = line.removeprefix("# branch.oid ")
        elif line and not line.startswith("# "):
            dirty = True
    if head is None:
        raise GitOpsError("the sandbox's git status named no HEAD commit")
    return TreeState(checked_sha(head), dirty)


async def commit_changes(
    sandbox: Sandbox, title: str, summary: str, author: Author, others: list[Author]
) -> Committed:
    """Commit everything the agent changed (`tree_state(...).dirty`) as `author`."""
    identity = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }
    message, trailers = commit_message(title, summary, author, others)
    await _git(sandbox, "add", "--all")
    result = await sandbox.exec(
        ["git", "commit", "--quiet", "--no-verify", "--file", "-"],
        env=identity,
        stdin=message.encode(),
        timeout=300,
    )
    if result.exit_code != 0:
        raise GitOpsError(
            f"git commit failed in the sandbox: {(result.stderr or result.stdout).strip()}"
        )
    return Committed(await head_sha(sandbox), message, trailers)


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


async def push_size(sandbox: Sandbox, revisions: str) -> PushSize:
    """What the commits in `revisions` weigh, and their biggest files, as the sandbox's git
    reports them (an estimate: a listing past `LISTING_CAP` counts what fits)."""
    listed = await sandbox.exec(
        ["git", "rev-list", "--objects", revisions], timeout=300, output_cap=LISTING_CAP
    )
    checked = listed
    if listed.exit_code == 0:
        checked = await sandbox.exec(
            ["git", "cat-file", CHECK_FORMAT],
            stdin=listed.stdout.encode(),
            timeout=300,
            output_cap=LISTING_CAP,
        )
    if checked.exit_code != 0:
        raise GitOpsError(f"could not size the push: {(checked.stderr or checked.stdout).strip()}")
    total, blobs = 0, []
    for line in checked.stdout.splitlines():
        fields = line.split(" ", 3)
        if len(fields) < 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            continue
        total += int(fields[1])
        if fields[0] == "blob":
            blobs.append((fields[3][:200] if len(fields) == 4 else "", int(fields[2])))
    biggest = sorted(blobs, key=lambda blob: blob[1], reverse=True)[:BIGGEST]
    return PushSize(total, biggest)


def _too_large(size: PushSize, cap: int, measured: str) -> PushTooLarge:
    return PushTooLarge(
        f"the push is {measured}, more than the {cap // MB} MB a push may carry "
        f"(NIGHTSHIFT_MAX_PUSH_MB); biggest files in its commits: {size.describe()}. Remove "
        "them from the branch's commits (a follow-up can rewrite them), or raise the cap"
    )


async def push_commits(
    sandbox: Sandbox,
    forge: Forge,
    url: str,
    branch: str,
    base_sha: str,
    expected_old: str | None,
    max_bytes: int,
) -> str:
    """Bundle `base_sha..HEAD` inside the sandbox, stream it out, push it from the host."""
    revisions = f"{base_sha}..{branch}"
    await _git(sandbox, "branch", "--force", branch, "HEAD")
    size = await push_size(sandbox, revisions)
    if size.disk_bytes > max_bytes:
        raise _too_large(size, max_bytes, f"about {_mb(size.disk_bytes)}")
    await _git(sandbox, "bundle", "create", "--quiet", BUNDLE_PATH, revisions)
    scratch = tempfile.mkdtemp(prefix="nightshift-push-")
    bundle = Path(scratch) / "push.bundle"
    try:
        try:
            await sandbox.copy_out(BUNDLE_PATH, bundle, max_bytes)
        except FileTooLarge:
            raise _too_large(size, max_bytes, f"over {max_bytes // MB} MB as a bundle") from None
        except SandboxError as exc:
            raise GitOpsError(f"could not copy the bundle out of the sandbox: {exc}") from exc
        return await forge.push_bundle(url, bundle, branch, expected_old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(SandboxError):
            await sandbox.exec(["rm", "-f", BUNDLE_PATH], timeout=30)
