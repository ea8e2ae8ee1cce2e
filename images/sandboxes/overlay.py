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
from collections.abc import Collection
from functools import cache
from pathlib import Path

from images.sandboxes import disk
from images.sandboxes.base import SandboxError
from images.sandboxes.limits import pid_alive

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2
_NOSUID_NODEV = 2 | 4  # MS_NOSUID | MS_NODEV


def _mount_overlay(lowers: list[str], upper: str, work: str, target: str) -> None:
    """Mount the overlay `nosuid,nodev`, naming its layers by descriptor.

    The options of a mount are shown to everyone who can read /proc/self/mountinfo, the
    sandbox included: `/proc/self/fd/N` names the layers without telling where on the host
    they are (the kernel resolves them at mount time; the descriptors close right after).
    """
    fds: list[int] = []
    try:
        for path in [*lowers, upper, work]:
            fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        opts = f"lowerdir={':'.join(names[:-2])},upperdir={names[-2]},workdir={names[-1]}"
        if _libc.mount(b"overlay", target.encode(), b"overlay", _NOSUID_NODEV, opts.encode()):
            err = ctypes.get_errno()
            raise SandboxError(f"mounting the workspace overlay failed: {os.strerror(err)}")
    finally:
        for fd in fds:
            os.close(fd)


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
    """The writable root of one sandbox: `merged` is what the sandbox sees.

    With a disk template (`disk.py`) everything the sandbox writes (the overlay's upper dir,
    /tmp, the egress socket's directory) lives on a loop-mounted disk of the quota's size, and
    so does the /etc it sees; without one (`NIGHTSHIFT_SANDBOX_DISK_MB=0`) on the host's
    filesystem beside the overlay.
    """

    def __init__(
        self,
        sandbox_dir: Path,
        lowers: list[Path],
        owner: tuple[int, int] | None,
        scratch: Path,
        disk_template: Path | None = None,
    ) -> None:
        self.dir = sandbox_dir
        self.template = disk_template
        self.image = sandbox_dir / "disk.img"
        self.disk = sandbox_dir / "disk"
        private = self.disk if disk_template is not None else sandbox_dir
        self.upper = private / "upper"
        self.work = private / "work"
        self.tmp = private / "tmp"
        self.egress = private / "egress"
        self.etc = self.disk / "etc" if disk_template is not None else None
        self.bridge = self.disk / "bridge.py" if disk_template is not None else None
        self.merged = sandbox_dir / "merged"
        self.lowers = lowers
        self.owner = owner
        self.overlay = overlay_supported(str(scratch))
        self.mounted = False
        self.disk_mounted = False

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=False)
        self.merged.mkdir()
        if self.template is not None:
            disk.create(self.image, self.disk, self.template)
            self.disk_mounted = True
        else:
            self._private_dirs()
        if self.overlay:
            _mount_overlay(
                [str(p) for p in self.lowers], str(self.upper), str(self.work), str(self.merged)
            )
            self.mounted = True
        else:
            # Without overlayfs the whole stack is materialised, bottom layer first.
            for layer in reversed(self.lowers):
                copy_tree(layer, self.merged)
            chown_tree(self.merged, self.owner)

    def _private_dirs(self) -> None:
        """What the disk template holds, made on the host's filesystem instead."""
        for d in (self.upper, self.work, self.egress):
            d.mkdir(mode=0o755)
        self.tmp.mkdir(mode=0o1777)
        os.chmod(self.tmp, 0o1777)  # noqa: S103  (the sandbox's own /tmp, sticky)
        if self.owner is not None:
            for d in (self.upper, self.work, self.tmp):
                os.chown(d, *self.owner)

    def changes_dir(self) -> Path:
        """The directory holding everything written since start (what a snapshot keeps)."""
        return self.upper if self.overlay else self.merged

    def destroy(self) -> None:
        if self.mounted:
            unmount(str(self.merged))
            self.mounted = False
        if self.disk_mounted:
            unmount(str(self.disk))
            self.disk_mounted = False
        shutil.rmtree(self.dir, ignore_errors=True)


def sandbox_owner(sandbox_id: str) -> int | None:
    """The pid of the process that made a sandbox (ids are `sb-<pid>-<random>`), if known."""
    parts = sandbox_id.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _stale(sandbox_id: str, keep: Collection[str], spare_own: bool) -> bool:
    if sandbox_id in keep:
        return False
    owner = sandbox_owner(sandbox_id)
    if owner == os.getpid():
        return not spare_own
    return owner is None or not pid_alive(owner)


def release_stale_mounts(
    sandboxes_root: Path, keep: Collection[str], *, spare_own: bool = False
) -> int:
    """Unmount what sandboxes left under `sandboxes_root` by a crashed process left mounted
    (overlay, then disk), and remove their directories; returns how many mounts went.

    A sandbox of another live process (a `nightshift run` beside `serve` on one data dir) is
    left alone: only ours that are not in `keep`, and those of dead processes, are released.
    The periodic sweep passes `spare_own`, since a sandbox of ours still starting is in no
    `keep` list yet.
    """
    count = 0
    root = str(sandboxes_root.resolve()) + "/"
    stale: set[str] = set()
    binds: list[str] = []
    with contextlib.suppress(OSError):
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        # Newest first: an overlay comes off before the disk under it.
        for line in reversed(lines):
            target = line.split()[4].replace("\\040", " ")
            if target + "/" == root or (target.startswith(root) and target.endswith("/sandboxes")):
                binds.append(target)  # a sandboxes' directory's own (`mountns.SandboxesRoot`)
            if not (target.startswith(root) and target.endswith(("/merged", "/disk", "/netns"))):
                continue
            sandbox_id = Path(target).relative_to(root.rstrip("/")).parts[0]
            if not _stale(sandbox_id, keep, spare_own):
                continue
            unmount(target)
            stale.add(sandbox_id)
            count += 1
    with contextlib.suppress(OSError):
        for child in sandboxes_root.iterdir():
            if child.name.startswith("sb-") and _stale(child.name, keep, spare_own):
                stale.add(child.name)
    for sandbox_id in stale:
        shutil.rmtree(sandboxes_root / sandbox_id, ignore_errors=True)
    for target in binds if not spare_own else ():
        # Once nothing is under it; not lazily, so a sandbox another process still runs
        # there keeps it (EBUSY).
        _libc.umount2(target.encode(), 0)
    return count
