"""Git inside a sandbox: the one helper the image starter (syncing a started sandbox to the
base) and the worker's git steps (`workers/gitops.py`: commit, bundle) run git with."""

from __future__ import annotations

from collections.abc import Callable

from images.sandboxes.base import Sandbox


async def sandbox_git(
    sandbox: Sandbox,
    *args: str,
    error: Callable[[str], Exception],
    env: dict[str, str] | None = None,
) -> str:
    """`git *args` in the sandbox's work tree; its stdout. A failure raises `error(message)`,
    the caller's own error class, with git's own words."""
    result = await sandbox.exec(["git", *args], env=env, timeout=300)
    if not result.ok:
        raise error(
            f"git {args[0]} failed in the sandbox: {(result.stderr or result.stdout).strip()}"
        )
    return result.stdout
