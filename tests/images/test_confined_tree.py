"""The file tools' confined tree (`images/sandboxes/pathsafe.py`) keeps no handle into the tree
once a call returns, whatever the call's outcome: a handle kept would hold a sandbox's disk
after its unmount (its loop device, its deleted image, the sandboxes' directory's bind)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images.sandboxes.base import SandboxFileError
from images.sandboxes.pathsafe import ConfinedTree


def _handles_into(tree: Path) -> list[str]:
    """What this process holds open at or under `tree`."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target == str(tree) or target.startswith(f"{tree}/"):
            held.append(target)
    return held


def test_no_call_leaves_a_handle_into_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "workspace"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("# demo\n")
    (root / "link").symlink_to("README.md")
    (root / "out").symlink_to("/etc/passwd")
    os.mkfifo(root / "trap")
    tree = ConfinedTree(str(root))
    dest = tmp_path / "copied"

    for round_ in range(3):
        assert tree.read("README.md", 1024) == b"# demo\n"
        assert tree.read("link", 1024) == b"# demo\n"
        tree.write("README.md", b"# demo\n")  # over a file that exists
        tree.write(f"src/new-{round_}.txt", b"new")  # and a new one, in a new place
        tree.write(f"deep/{round_}/file.txt", b"deeper")
        assert tree.copy_out("README.md", str(dest), 1024) == 7
        dest.unlink()
        names = [e.path for e in tree.listdir(".", recursive=True, limit=100)]
        assert "README.md" in names and f"deep/{round_}/file.txt" in names
        for refused in ("trap", "out", "missing.txt", "src"):
            with pytest.raises(SandboxFileError):
                tree.read(refused, 1024)
        with pytest.raises(SandboxFileError):
            tree.listdir("README.md", recursive=False, limit=10)
        with pytest.raises(SandboxFileError):
            tree.write("link", b"through a link")

    assert _handles_into(root) == []
