"""Image directories on the host: folding what a build sandbox wrote (an overlayfs upper
directory) into the image, and removing trees whatever their permissions."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from images.sandboxes.base import SnapshotRef
from images.setup import BuildError

_OVERLAY_XATTR = "trusted.overlay."
_SETID = stat.S_ISUID | stat.S_ISGID


def _strip_overlay_xattrs(path: str) -> None:
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(_OVERLAY_XATTR):
                os.removexattr(path, name, follow_symlinks=False)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(Path(path))
    elif os.path.lexists(path):
        os.unlink(path)


def apply_layer(layer: Path, root: Path) -> None:
    """Fold an overlayfs upper directory into `root` (which was its lower layer).

    Whiteouts (0/0 character devices) delete, opaque directories replace, everything else is
    moved over what was there, without setuid and setgid bits: a build sandbox's files belong
    to the sandbox uid, and the image is shared by every sandbox of the repo. The layer is
    consumed.
    """
    for dirpath, dirnames, filenames in os.walk(layer, topdown=True):
        rel = os.path.relpath(dirpath, layer)
        target_dir = root if rel == "." else root / rel
        for name in dirnames:
            src, dst = os.path.join(dirpath, name), str(target_dir / name)
            opaque = False
            with contextlib.suppress(OSError):
                opaque = os.getxattr(src, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
            if opaque or (os.path.lexists(dst) and not os.path.isdir(dst)) or os.path.islink(dst):
                _remove(dst)
            if not os.path.lexists(dst):
                os.mkdir(dst)
            st = os.lstat(src)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode) & ~_SETID)
        for name in filenames:
            src, dst = os.path.join(dirpath, name), str(target_dir / name)
            st = os.lstat(src)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                _remove(dst)  # a whiteout: the file was deleted
                continue
            if os.path.isdir(dst) and not os.path.islink(dst):
                remove_tree(Path(dst))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & _SETID:
                os.chmod(src, stat.S_IMODE(st.st_mode) & ~_SETID)
            os.replace(src, dst)
            _strip_overlay_xattrs(dst)
    # Directory times last: moving entries in touched them.
    for dirpath, _dirnames, _filenames in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        dst = str(root if rel == "." else root / rel)
        st = os.lstat(dirpath)
        with contextlib.suppress(OSError):
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Remove a tree even where builds left directories without write permission."""

    def on_error(func: Callable[..., object], failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(OSError):
            func(failed)

    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=on_error)


def tree_size(path: Path) -> int:
    """Bytes `path` takes on disk (allocated blocks, each hard-linked file counted once, links
    not followed); parts a build left unreadable are not counted."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


def fold_snapshot(snapshot: SnapshotRef, root: Path) -> None:
    """Make what a build sandbox wrote (its snapshot) part of the image directory `root`."""
    layer = Path(snapshot.location)
    if not layer.is_dir():
        raise BuildError(
            f"the {snapshot.backend} backend keeps snapshots outside this host "
            f"({snapshot.location}); it cannot produce a local image directory"
        )
    holder = layer.parent if layer.parent.name == snapshot.id else None
    try:
        if snapshot.full:
            remove_tree(root)
            os.replace(layer, root)
        else:
            apply_layer(layer, root)
    finally:
        remove_tree(holder or layer)


def clean_partials(repo_dir: Path, cold_min_age_s: float) -> None:
    """Remove half-built directories a dead builder of a repo left behind in `repo_dir`."""
    if not repo_dir.is_dir():
        return
    for partial in repo_dir.glob(".img-*.partial"):
        remove_tree(partial)
    for partial in repo_dir.glob(".cold-*.partial"):
        with contextlib.suppress(OSError):
            if time.time() - partial.stat().st_mtime > cold_min_age_s:
                remove_tree(partial)
