"""Snapshot layers of the local backends: stacking, merging past the layer limit (with
overlayfs whiteouts and opaque directories), and what `collect` keeps."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from images.sandboxes import snapshots
from images.sandboxes.base import Limits, SandboxFileError, SandboxSpec
from images.sandboxes.bwrap import BwrapBackend
from images.sandboxes.environment import default_owner
from tests.images.conftest import build_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


async def test_long_chains_are_merged_into_one_layer(tmp_path: Path) -> None:
    backend = BwrapBackend(tmp_path / "state", default_owner(), max_layers=2)
    image = build_image(tmp_path, backend)
    limits = Limits(exec_timeout_s=60)

    async def step(source: object, script: str) -> object:
        sandbox = await backend.start(SandboxSpec(source, limits))  # type: ignore[arg-type]
        result = await sandbox.exec(["sh", "-c", script])
        assert result.exit_code == 0, result
        ref = await sandbox.snapshot()
        await sandbox.terminate()
        return ref

    s1 = await step(image, "echo one > one.txt && rm README.md && rm -r src")
    s2 = await step(s1, "echo two > two.txt")
    s3 = await step(s2, "mkdir src && echo new > src/new.py && echo three > three.txt")
    assert len(s2.layers) == 1  # type: ignore[attr-defined]
    assert s3.layers == ()  # type: ignore[attr-defined]  # merged: past max_layers
    final = await backend.start(SandboxSpec(s3, limits))  # type: ignore[arg-type]
    try:
        for name, text in (("one.txt", b"one\n"), ("two.txt", b"two\n"), ("three.txt", b"three\n")):
            assert await final.read_file(name) == text
        assert await final.read_file("src/new.py") == b"new\n"
        with pytest.raises(SandboxFileError):
            await final.read_file("README.md")  # deleted in the first layer, still deleted
        with pytest.raises(SandboxFileError):
            await final.read_file("src/app.py")  # the re-created dir hides the image's files
        listing = await final.exec(["ls", "-A"])
        assert listing.stdout.split() == ["one.txt", "src", "three.txt", "two.txt"]
    finally:
        await final.terminate()
    # The merged snapshot no longer needs the chain it was built from.
    assert sorted(backend.collect_snapshots(0, keep={s3.id})) == sorted([s1.id, s2.id])  # type: ignore[attr-defined]


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are device nodes: root only")
def test_merge_layer_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "gone").mkdir(parents=True)
    (lower / "gone" / "f").write_text("old")
    (lower / "keep.txt").write_text("keep")
    (lower / "file").write_text("was a file")
    (lower / "dir").mkdir()
    (lower / "dir" / "old").write_text("old")
    upper.mkdir()
    os.mknod(upper / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    (upper / "file").mkdir()  # a file replaced by a directory
    (upper / "file" / "inside").write_text("x")
    (upper / "dir").mkdir()
    os.setxattr(upper / "dir", snapshots.OPAQUE_XATTR, b"y")
    (upper / "dir" / "new").write_text("new")
    snapshots.merge_layer(upper, lower)
    assert (lower / "gone").is_char_device()
    assert (lower / "keep.txt").read_text() == "keep"
    assert (lower / "file" / "inside").read_text() == "x"
    assert sorted(p.name for p in (lower / "dir").iterdir()) == ["new"]
    assert os.getxattr(lower / "dir", snapshots.OPAQUE_XATTR) == b"y"


def test_collect_removes_stale_partial_captures(tmp_path: Path) -> None:
    root = snapshots.snapshot_root(tmp_path)
    stale, fresh = root / ".snap-dead.partial", root / ".snap-live.partial"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - 2 * snapshots.PARTIAL_MAX_AGE_S
    os.utime(stale, (old, old))
    assert snapshots.collect(tmp_path, 3600, keep=(), in_use=()) == []
    assert not stale.exists() and fresh.exists()


def test_stale_mounts_of_dead_processes_are_released_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess

    from images.sandboxes.overlay import overlay_supported, release_stale_mounts, unmount

    if not overlay_supported(str(tmp_path)):
        pytest.skip("this host cannot mount overlayfs (needs root)")
    from images.sandboxes.overlay import _mount_overlay

    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "sandboxes"
    mounts = {}
    for name in (
        f"sb-{dead.pid}-aaaaaa",
        f"sb-{os.getpid()}-bbbbbb",
        f"sb-{os.getpid()}-cccccc",
        "sb-1-dddddd",
    ):
        fs = root / name / "fs"
        for sub in ("lower", "upper", "work", "merged"):
            (fs / sub).mkdir(parents=True)
        _mount_overlay([str(fs / "lower")], str(fs / "upper"), str(fs / "work"), str(fs / "merged"))
        mounts[name] = fs / "merged"
    try:
        released = release_stale_mounts(root, keep={f"sb-{os.getpid()}-cccccc"})
        assert released == 2  # the dead process's, and ours that is no longer live
        mounted = Path("/proc/self/mountinfo").read_text()
        assert str(mounts[f"sb-{dead.pid}-aaaaaa"]) not in mounted
        assert str(mounts[f"sb-{os.getpid()}-bbbbbb"]) not in mounted
        assert str(mounts[f"sb-{os.getpid()}-cccccc"]) in mounted  # live in this process
        assert str(mounts["sb-1-dddddd"]) in mounted  # another live process's sandbox
    finally:
        for merged in mounts.values():
            unmount(str(merged))
