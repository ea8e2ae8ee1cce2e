"""What a sandbox pushes is checked on the host before it reaches a repository: a tree with a
`.git` (or `..`) entry, crafted with git plumbing as a hostile agent would, is refused by
git's fsck on both forges, and nothing of it lands. Real git throughout; GitHub is the fake
GitHub behind a real `git http-backend`."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from integrations.forge.base import ForgeError
from integrations.forge.local import LocalForge
from integrations.github import GitHubApp, GitHubConfig, GitHubForge
from tests.factories import git, make_repo
from tests.fakes.github import FakeGitHub


def _plumb(repo: Path, *args: str, input: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], input=input, check=True, capture_output=True, text=True
    ).stdout.strip()


def _crafted_bundle(work: Path, entry: str, out: Path) -> tuple[Path, str, str]:
    """A bundle of one commit over `work`'s HEAD whose tree has a directory named `entry`
    holding a `config`; returns (bundle, base sha, bad tree sha)."""
    base = git(work, "rev-parse", "HEAD").strip()
    blob = _plumb(work, "hash-object", "-w", "--stdin", input="[core]\n\tfsmonitor = evil\n")
    inner = _plumb(work, "mktree", input=f"100644 blob {blob}\tconfig\n")
    top = _plumb(work, "mktree", input=f"040000 tree {inner}\t{entry}\n")
    commit = git(work, "commit-tree", top, "-p", base, "-m", "innocent").strip()
    git(work, "branch", "--force", "nightshift/evil", commit)
    git(work, "bundle", "create", "--quiet", str(out), f"{base}..nightshift/evil")
    return out, base, inner


def _has_object(repo: Path, sha: str) -> bool:
    try:
        git(repo, "cat-file", "-e", sha)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("entry", [".git", "..", ".GIT"])
def test_local_forge_refuses_a_tree_with_a_git_entry(tmp_path: Path, entry: str) -> None:
    repo = make_repo(tmp_path, "proj")
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(repo), str(work))
    bundle, _, inner = _crafted_bundle(work, entry, tmp_path / "evil.bundle")
    refs_before = git(repo, "for-each-ref")
    with pytest.raises(ForgeError, match="refused by git's object checks") as refused:
        asyncio.run(LocalForge().push_bundle(str(repo), bundle, "nightshift/evil", None))
    assert "nothing was pushed" in str(refused.value)
    assert git(repo, "for-each-ref") == refs_before
    assert not _has_object(repo, inner)
    leftovers = [p.name for p in (repo / ".git" / "objects" / "pack").iterdir()]
    assert not [name for name in leftovers if name.startswith("tmp_")]


def test_local_forge_still_takes_ordinary_commits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(repo), str(work))
    base = git(work, "rev-parse", "HEAD").strip()
    (work / "ok.txt").write_text("fine\n")
    git(work, "add", "-A")
    git(work, "-c", "user.name=A", "-c", "user.email=a@example.com", "commit", "-qm", "ok")
    git(work, "branch", "nightshift/ok")
    git(work, "bundle", "create", "--quiet", str(tmp_path / "ok.bundle"), f"{base}..nightshift/ok")
    pushed = asyncio.run(
        LocalForge().push_bundle(str(repo), tmp_path / "ok.bundle", "nightshift/ok", None)
    )
    assert pushed == git(work, "rev-parse", "HEAD").strip()
    assert git(repo, "show", "nightshift/ok:ok.txt") == "fine\n"


def test_github_forge_refuses_a_tree_with_a_git_entry(
    github_fake: FakeGitHub, tmp_path: Path
) -> None:
    remote = github_fake.add_repo("octo/proj", files={"README.md": "hello\n"})
    config = GitHubConfig(api_url=github_fake.api_url, timeout_s=10, retry_base_s=0.05)
    app = GitHubApp(config, github_fake.app_id, github_fake.private_key)
    forge = GitHubForge(app, tmp_path / "mirrors")

    async def scenario() -> None:
        work = tmp_path / "work"
        await forge.clone("octo/proj", "main", work)
        bundle, _, inner = _crafted_bundle(work, ".git", tmp_path / "evil.bundle")
        refs_before = git(remote.path, "for-each-ref")
        with pytest.raises(ForgeError, match="refused by git's object checks"):
            await forge.push_bundle("octo/proj", bundle, "nightshift/evil", None)
        assert git(remote.path, "for-each-ref") == refs_before
        assert not _has_object(remote.path, inner)
        assert not _has_object(forge.mirror_path("octo/proj"), inner)
        receive = [r for r in github_fake.git_requests if r[1] == "receive-pack"]
        assert receive == []  # it never left the host

    asyncio.run(scenario())
