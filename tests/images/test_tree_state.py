"""What the end of a prompt asks the sandbox's git (`workers/gitops.py` `tree_state`): HEAD and
whether anything changed, from one command, in a real bubblewrap sandbox; and what the sandbox
prints is not taken for a commit id unless it is one."""

from __future__ import annotations

from typing import Any

import pytest

from images.sandboxes.base import Sandbox
from tests.images.conftest import only_bwrap
from workers.gitops import GitOpsError, checked_sha, head_sha, tree_state

IDENTITY = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com"}
IDENTITY |= {"GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


backend_name = pytest.fixture(name="backend_name")(only_bwrap)


async def _sh(sandbox: Sandbox, script: str) -> str:
    result = await sandbox.exec(["sh", "-c", script], env=IDENTITY)
    assert result.ok, result.stderr
    return result.stdout


async def test_one_status_tells_head_and_every_kind_of_change(start: Any) -> None:
    sandbox = await start()
    await _sh(sandbox, "git init -q && git add -A && git commit -qm base")
    head = (await _sh(sandbox, "git rev-parse HEAD")).strip()
    commands = 0
    exec_ = sandbox.exec

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal commands
        commands += 1
        return await exec_(*args, **kwargs)

    sandbox.exec = counted  # type: ignore[method-assign]
    clean = await tree_state(sandbox)
    assert (clean.head, clean.dirty, commands) == (head, False, 1)
    sandbox.exec = exec_  # type: ignore[method-assign]

    for change in (
        "echo more >> README.md",  # a tracked file changed
        "mkdir -p new/deep && echo x > new/deep/file.txt",  # untracked, in a new directory
        "git rm -q README.md",  # a file removed and staged
    ):
        await _sh(sandbox, change)
        state = await tree_state(sandbox)
        assert (state.head, state.dirty) == (head, True), change
        await _sh(sandbox, "git reset -q --hard && git clean -qfd")
        assert await tree_state(sandbox) == clean

    await _sh(sandbox, "echo y > y.txt && git add -A && git commit -qm next")
    moved = await tree_state(sandbox)
    assert moved.head == await head_sha(sandbox) != head and not moved.dirty
    ignored = await _sh(
        sandbox, "echo 'build/' > .git/info/exclude && mkdir build && touch build/o"
    )
    assert ignored == "" and not (await tree_state(sandbox)).dirty  # ignored files are not work


async def test_a_repository_without_a_commit_is_an_error_not_a_head(start: Any) -> None:
    sandbox = await start()
    await _sh(sandbox, "git init -q")
    with pytest.raises(GitOpsError, match=r"no HEAD commit|where a commit id belongs"):
        await tree_state(sandbox)


def test_only_a_full_commit_id_passes() -> None:
    assert checked_sha("a" * 40 + "\n") == "a" * 40
    assert checked_sha("b" * 64) == "b" * 64
    for junk in ("", "(initial)", "a" * 39, "A" * 40, "a" * 41, "a" * 40 + " x", "HEAD"):
        with pytest.raises(GitOpsError, match="where a commit id belongs"):
            checked_sha(junk)
