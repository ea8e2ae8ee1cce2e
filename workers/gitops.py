"""Finishing a prompt: commit inside the sandbox as the person who asked, carry the commits out
as a git bundle, and push them from the host. No credential ever enters the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from images.sandboxes.base import Sandbox, SandboxError
from integrations.forge.base import Forge
from workers.errors import WorkersError
from workers.events import Author

BUNDLE_PATH = ".git/nightshift-push.bundle"


class GitOpsError(WorkersError):
    pass


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
    result = await sandbox.exec(["git", *args], env=env, timeout=300)
    if result.exit_code != 0:
        raise GitOpsError(
            f"git {args[0]} failed in the sandbox: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


async def head_sha(sandbox: Sandbox) -> str:
    return (await _git(sandbox, "rev-parse", "HEAD")).strip()


async def commit_changes(
    sandbox: Sandbox, title: str, summary: str, author: Author, others: list[Author]
) -> Committed | None:
    """Commit everything the agent changed as `author`; None when the tree is clean."""
    status = await _git(sandbox, "status", "--porcelain", "--untracked-files=all")
    if not status.strip():
        return None
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


async def push_commits(
    sandbox: Sandbox, forge: Forge, url: str, branch: str, base_sha: str, expected_old: str | None
) -> str:
    """Bundle `base_sha..HEAD` inside the sandbox, read it out, push it from the host."""
    await _git(sandbox, "branch", "--force", branch, "HEAD")
    await _git(sandbox, "bundle", "create", "--quiet", BUNDLE_PATH, f"{base_sha}..{branch}")
    try:
        data = await sandbox.read_file(BUNDLE_PATH, max_bytes=2 * 1024**3)
    except SandboxError as exc:
        raise GitOpsError(f"could not read the bundle out of the sandbox: {exc}") from exc
    fd, name = tempfile.mkstemp(suffix=".bundle", prefix="nightshift-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return await forge.push_bundle(url, Path(name), branch, expected_old)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
        with contextlib.suppress(SandboxError):
            await sandbox.exec(["rm", "-f", BUNDLE_PATH], timeout=30)
