"""Copy-on-write workspaces for local backends: an overlayfs upper dir per sandbox.

The image directory is the read-only lower layer (snapshots stack above it); everything a
sandbox writes lands in its own upper dir, so a snapshot costs what changed. Where the host
cannot mount overlayfs (not root), the lower layers are copied instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from images.sandboxes.base import SandboxError
from images.sandboxes.limits import pid_alive

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def _mount_overlay(lowers: list[str], upper: str, work: str, target: str) -> None:
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    if _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"mounting the workspace overlay failed: {os.strerror(err)}")


def unmount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone already
            raise SandboxError(f"unmounting {target} failed: {os.strerror(err)}")


@cache
def overlay_supported(scratch: str) -> bool:
    """True when this process can mount overlayfs (tried once, in a scratch directory)."""
    if os.geteuid() != 0:
        return False
    base = Path(scratch) / ".overlay-probe"
    dirs = [base / n for n in ("lower", "upper", "work", "merged")]
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        _mount_overlay([str(dirs[0])], str(dirs[1]), str(dirs[2]), str(dirs[3]))
        unmount(str(dirs[3]))
        return True
    except (SandboxError, OSError):
        return False
    finally:
        shutil.rmtree(base, ignore_errors=True)


def chown_tree(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    uid, gid = owner
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def copy_tree(src: Path, dest: Path) -> None:
    """Copy preserving ownership, modes, xattrs and overlay whiteouts; reflink where possible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["cp", "-a", "--reflink=auto", f"{src}/.", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SandboxError(f"copying {src} failed: {result.stderr.strip()}")


class Workspace:
    """The writable root of one sandbox: `merged` is what the sandbox sees."""

    def __init__(
        self, sandbox_dir: Path, lowers: list[Path], owner: tuple[int, int] | None, scratch: Path
    ) -> None:
        self.dir = sandbox_dir
        self.upper = sandbox_dir / "upper"
        self.work = sandbox_dir / "work"
        self.merged = sandbox_dir / "merged"
        self.lowers = lowers
        self.owner = owner
        self.overlay = overlay_supported(str(scratch))
        self.mounted = False

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=False)
        self.merged.mkdir()
        if self.overlay:
            self.upper.mkdir()
            self.work.mkdir()
            if self.owner is not None:
                os.chown(self.upper, *self.owner)
                os.chown(self.work, *self.owner)
            _mount_overlay(
                [str(p) for p in self.lowers], str(self.upper), str(self.work), str(self.merged)
            )
            self.mounted = True
        else:
            # Without overlayfs the whole stack is materialised, bottom layer first.
            for layer in reversed(self.lowers):
                copy_tree(layer, self.merged)
            chown_tree(self.merged, self.owner)

    def changes_dir(self) -> Path:
        """The directory holding everything written since start (what a snapshot keeps)."""
        return self.upper if self.overlay else self.merged

    def destroy(self) -> None:
        if self.mounted:
            unmount(str(self.merged))
            self.mounted = False
        shutil.rmtree(self.dir, ignore_errors=True)


def sandbox_owner(sandbox_id: str) -> int | None:
    """The pid of the process that made a sandbox (ids are `sb-<pid>-<random>`), if known."""
    parts = sandbox_id.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def release_stale_mounts(sandboxes_root: Path, keep: set[str]) -> int:
    """Unmount overlays left under `sandboxes_root` by a crashed process; returns how many.

    A sandbox of another live process (a `nightshift run` beside `serve` on one data dir) is
    left alone: only ours that are not in `keep`, and those of dead processes, are released.
    """
    count = 0
    root = str(sandboxes_root.resolve()) + "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4]
            if not (target.startswith(root) and target.endswith("/merged")):
                continue
            sandbox_id = Path(target).relative_to(root.rstrip("/")).parts[0]
            owner = sandbox_owner(sandbox_id)
            if sandbox_id in keep:
                continue
            if owner is not None and owner != os.getpid() and pid_alive(owner):
                continue
            unmount(target)
            count += 1
    return count
