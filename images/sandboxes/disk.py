"""A disk of its own per local sandbox: a sparse ext4 image, loop-mounted, holding everything
the sandbox writes (its overlay upper dir, /tmp, and the /etc and egress directory it sees).

Why a loop-mounted image: the host's filesystem may be plain ext4 without project quotas
(this one is), tmpfs would spend memory on what is meant to be disk, and an ext4 image of a
fixed size is a hard wall for bytes and inodes alike: writing past it fails inside the
sandbox with ENOSPC and the host loses at most the image's size. Start-time cost is kept to
about a millisecond: `mkfs` runs once per size (and per /etc), into a template that already
holds the sandbox's directories; a sandbox copies only the template's data extents (a few
hundred KB, holes stay holes), attaches a loop device with `LOOP_CONFIGURE` and mounts it
`nosuid,nodev` without zeroing inode tables. The loop device is set to clear itself when the
filesystem is unmounted, so no path leaves one attached.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from images.sandboxes.base import SandboxError, UnsupportedSetting
from images.sandboxes.limits import pid_alive

_libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_NOATIME = 2, 4, 1024
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LOOP_ATTEMPTS = 100
_LOOP_INFO64 = "QQQQQIIII64s64s32s2Q"
MOUNT_OPTS = "noinit_itable,errors=remount-ro"
MIN_DISK_MB = 16
DIRS = ("upper", "work", "tmp", "egress")


@dataclass(frozen=True)
class DiskSpec:
    """The size of a sandbox's disk and who owns its writable directories."""

    size_mb: int
    inodes: int
    owner: tuple[int, int] | None


BYTES_PER_INODE = 16384  # mkfs.ext4's own default ratio


def inode_count(spec: DiskSpec) -> int:
    """The inodes the disk gets: the cap asked for, but at most one per 16 KB of the quota, so
    the inode tables (256 bytes each, inside the quota) never take more than 1/64 of it. A
    million inodes on a 300 MB quota once left 56 MB for data."""
    return max(1024, min(spec.inodes, (spec.size_mb << 20) // BYTES_PER_INODE))


def _mkfs(image: Path, spec: DiskSpec, content: Path) -> None:
    with open(image, "wb") as f:
        f.truncate(spec.size_mb << 20)
    result = subprocess.run(
        [
            "mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(inode_count(spec)), "-m", "0",
            # No journal: the disk lives as long as its sandbox, and a crash ends both.
            "-O", "^has_journal,^resize_inode",
            "-E", "lazy_itable_init=1,nodiscard", "-d", str(content), str(image),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SandboxError(f"mkfs.ext4 for the sandbox disk failed: {result.stderr.strip()}")


def template(
    root: Path, spec: DiskSpec, etc: Path | None, files: Mapping[str, Path] | None = None
) -> Path:
    """The pre-formatted image sandboxes of `spec` copy: built once per process and size,
    holding their empty writable directories, a copy of `etc` (their /etc) and of `files`
    (name on the disk -> host file; read-only inside, like the egress bridge)."""
    if shutil.which("mkfs.ext4") is None:
        raise UnsupportedSetting(
            "the sandbox disk quota needs mkfs.ext4 (`apt-get install e2fsprogs`); "
            "NIGHTSHIFT_SANDBOX_DISK_MB=0 runs without a quota"
        )
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        pid = child.name.split("-", 1)[0].lstrip(".")
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    files = files or {}
    key = hashlib.sha256(f"{spec}|{etc}|{sorted(files.items())}".encode()).hexdigest()[:12]
    image = root / f"{os.getpid()}-{spec.size_mb}m-{key}.img"
    if image.exists():
        return image
    staging = root / f".{os.getpid()}-{key}.d"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    try:
        os.chmod(staging, 0o755)  # noqa: S103  (the disk's root, reached only through binds)
        for name in DIRS:
            (staging / name).mkdir(mode=0o755)
        os.chmod(staging / "tmp", 0o1777)  # noqa: S103  (the sandbox's own /tmp, sticky)
        if spec.owner is not None:
            for name in ("upper", "work", "tmp"):
                os.chown(staging / name, *spec.owner)
        if etc is not None:
            shutil.copytree(etc, staging / "etc", symlinks=True)
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
            os.chmod(staging / name, 0o644)
        partial = image.with_name(f".{image.name}.partial")
        _mkfs(partial, spec, staging)
        partial.rename(image)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image


def copy_sparse(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` reading only its data extents: holes stay holes."""
    fin = os.open(src, os.O_RDONLY)
    try:
        fout = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(fin).st_size
            os.ftruncate(fout, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fin, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # only a hole is left
                    raise
                end = os.lseek(fin, start, os.SEEK_HOLE)
                pos = start
                while pos < end:
                    done = os.copy_file_range(fin, fout, end - pos, pos, pos)
                    if done == 0:
                        raise SandboxError(f"copying the disk template {src} stopped short")
                    pos += done
                offset = end
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _attach(image: Path) -> tuple[str, int]:
    """A free loop device backed by `image`, set to detach itself once unmounted."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            # Processes attaching at once (several API processes or workers on one host) are
            # handed the same free device; the losers back off a little and ask again.
            for attempt in range(LOOP_ATTEMPTS):
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                try:
                    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    os.mknod(device, 0o600 | 0o060000, os.makedev(7, number))
                    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                info = struct.pack(
                    _LOOP_INFO64, 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                    str(image.name).encode()[:63], b"", b"", 0, 0,
                )  # fmt: skip
                config = struct.pack("II", backing, 0) + info + bytes(64)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                    return device, fd
                except OSError as exc:
                    os.close(fd)
                    if exc.errno != errno.EBUSY:  # another process took it first: next one
                        raise SandboxError(f"attaching {device} failed: {exc}") from exc
                    time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
            raise SandboxError("no free loop device for the sandbox disk")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def mount_disk(image: Path, target: Path) -> None:
    """Mount `image` at `target` (nosuid, nodev) on a loop device of its own."""
    device, fd = _attach(image)
    try:
        flags = MS_NOSUID | MS_NODEV | MS_NOATIME
        if (
            _libc.mount(device.encode(), str(target).encode(), b"ext4", flags, MOUNT_OPTS.encode())
            != 0
        ):
            err = ctypes.get_errno()
            raise SandboxError(f"mounting the sandbox disk failed: {os.strerror(err)}")
    finally:
        # With AUTOCLEAR the device detaches when this was its last user: at once if the mount
        # failed, at unmount otherwise.
        os.close(fd)


def create(image: Path, target: Path, tmpl: Path) -> None:
    """A sandbox's disk: a copy of `tmpl` at `image`, mounted at `target`."""
    copy_sparse(tmpl, image)
    target.mkdir()
    try:
        mount_disk(image, target)
    except BaseException:
        with contextlib.suppress(OSError):
            image.unlink()
        raise
