"""Mirrors: a burst of starts on one repo shares fetches, and a fetch is never staler than
the moment its caller asked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from images.mirror import Mirrors
from images.spec import RepoSpec
from integrations.forge.local import LocalForge
from tests.factories import git, make_repo


class CountingForge(LocalForge):
    """The local forge (a git host on this machine), counting the fetches it serves."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, url: str, branch: str, mirror: Path) -> str:
        self.fetches += 1
        return await super().fetch(url, branch, mirror)


def _commit(repo: Path, message: str) -> str:
    (repo / "NOTES.md").write_text(message + "\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def test_a_burst_of_updates_shares_fetches_and_each_sees_a_tip_from_after_it_asked(
    tmp_path: Path,
) -> None:
    origin = make_repo(tmp_path)
    spec = RepoSpec(name="proj", url=str(origin))
    mirrors = Mirrors(tmp_path / "mirrors")
    forge = CountingForge()

    async def scenario() -> None:
        tips = await asyncio.gather(*(mirrors.update(spec, forge) for _ in range(20)))
        head = git(origin, "rev-parse", "HEAD").strip()
        assert set(tips) == {head}
        # The first caller fetched; the 19 that queued behind it share the one fetch that
        # began after they asked (not one fetch each).
        assert forge.fetches == 2

        # A later caller never gets a tip from before it asked: the new commit is seen.
        newer = _commit(origin, "second")
        assert await mirrors.update(spec, forge) == newer
        assert forge.fetches == 3

    asyncio.run(scenario())
