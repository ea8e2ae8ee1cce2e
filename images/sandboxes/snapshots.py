"""Snapshots of local sandboxes: the overlay upper dir, copied into a layer.

Layout: `<state>/snapshots/<id>/{layer/, meta.json}`, written under a `.partial` name and
renamed into place when complete. A snapshot of a sandbox that itself started from a
snapshot stacks on the older layers (`SnapshotRef.layers`), so each costs only what changed;
past `max_layers` the stack is merged into one layer, honouring overlayfs whiteouts and
opaque directories, so mounts stay short and fast.

Setuid and setgid bits do not survive into a layer: a sandbox's files land on the host owned
by the sandbox uid, and a setuid one there would let any local user act as that uid.
A snapshot keeps at most the sandbox's disk quota, its older layers included (`size` beside
`meta.json` records what each layer holds); a larger one is refused with `SnapshotTooLarge`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path

from images.sandboxes.base import (
    ImageRef,
    SandboxError,
    SnapshotRef,
    SnapshotTooLarge,
    SnapshotUnusable,
)
from images.sandboxes.overlay import copy_tree

OPAQUE_XATTR = "trusted.overlay.opaque"
PARTIAL_MAX_AGE_S = 3600.0


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def strip_setid(root: Path) -> None:
    """Clear setuid and setgid bits on every file below `root` (symlinks have none)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


def tree_bytes(root: Path) -> int:
    """Bytes `root` takes on disk (allocated blocks, so sparse files count what they use)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        total += os.lstat(dirpath).st_blocks * 512
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def layer_bytes(layer: Path) -> int:
    """What a snapshot layer holds, from the `size` recorded beside it when there is one."""
    try:
        return int((layer.parent / "size").read_text())
    except (OSError, ValueError):
        return tree_bytes(layer)


def _refuse_if_over(held: int, max_bytes: int | None) -> None:
    if max_bytes is not None and held > max_bytes:
        raise SnapshotTooLarge(
            f"the snapshot would keep {held >> 20} MB, more than the sandbox disk quota of "
            f"{max_bytes >> 20} MB (NIGHTSHIFT_SANDBOX_DISK_MB); it was not taken"
        )


def merge_layer(src: Path, dst: Path) -> None:
    """Apply overlay layer `src` on top of layer `dst`, as overlayfs would show them stacked."""
    if not dst.exists():
        copy_tree(src, dst)
        return
    make_opaque: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            d = os.path.normpath(os.path.join(dst, rel, name))
            try:
                d_st = os.lstat(d)
            except FileNotFoundError:
                continue
            s_st = os.lstat(s)
            s_dir, d_dir = stat.S_ISDIR(s_st.st_mode), stat.S_ISDIR(d_st.st_mode)
            if _is_whiteout(s_st) or s_dir != d_dir or (s_dir and _is_opaque(s)):
                _remove(d)
                if s_dir and not _is_opaque(s) and _is_whiteout(d_st):
                    # A directory re-created over a deletion must keep hiding what was deleted.
                    make_opaque.append(d)
    copy_tree(src, dst)
    for path in make_opaque:
        os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)
    strip_setid(dst)


def snapshot_root(state_dir: Path) -> Path:
    return state_dir / "snapshots"


def capture(
    state_dir: Path,
    *,
    backend: str,
    runtime: str,
    source: ImageRef | SnapshotRef,
    changes: Path,
    overlay: bool,
    max_layers: int,
    max_bytes: int | None = None,
) -> SnapshotRef:
    """Copy `changes` (a sandbox's upper dir, or its whole tree without overlayfs) into a new
    snapshot stacked on `source`; refuse one holding more than `max_bytes` with its layers."""
    snap_id = f"snap-{secrets.token_hex(6)}"
    root = snapshot_root(state_dir)
    final, partial = root / snap_id, root / f".{snap_id}.partial"
    partial.mkdir(parents=True)
    try:
        layers: tuple[str, ...] = ()
        if isinstance(source, SnapshotRef):
            image = source.image
            if overlay and not source.full:
                layers = (source.location, *source.layers)
        else:
            image = source
        changed = tree_bytes(changes) if max_bytes is not None else 0
        held = changed + sum(layer_bytes(Path(older)) for older in layers)
        _refuse_if_over(held, max_bytes)
        if len(layers) + 1 > max_layers:
            for older in reversed(layers):  # oldest first
                merge_layer(Path(older), partial / "layer")
            merge_layer(changes, partial / "layer")
            layers = ()
            changed = tree_bytes(partial / "layer") if max_bytes is not None else 0
        else:
            copy_tree(changes, partial / "layer")
            strip_setid(partial / "layer")
        if max_bytes is not None:
            (partial / "size").write_text(str(changed))
        ref = SnapshotRef(
            id=snap_id,
            image=image,
            backend=backend,
            location=str(final / "layer"),
            runtime=runtime,
            created_at=time.time(),
            layers=layers,
            full=not overlay,
        )
        (partial / "meta.json").write_text(json.dumps(asdict(ref)))
        partial.rename(final)
        return ref
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load(state_dir: Path, snapshot_id: str) -> SnapshotRef:
    """A snapshot by id, from its `meta.json`."""
    meta = snapshot_root(state_dir) / snapshot_id / "meta.json"
    try:
        data = json.loads(meta.read_text())
        data["image"] = ImageRef(**data["image"])
        data["layers"] = tuple(data.get("layers", ()))
        return SnapshotRef(**data)
    except FileNotFoundError:
        raise SandboxError(f"no snapshot {snapshot_id} in {snapshot_root(state_dir)}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise SandboxError(f"snapshot {snapshot_id} has unreadable metadata: {exc}") from exc


def lowers(source: ImageRef | SnapshotRef, *, backend: str, runtime: str) -> list[Path]:
    """The read-only layers, newest first, of a sandbox started from `source` by `backend`
    running `runtime`; a snapshot another runtime took, or one missing a layer, is refused."""
    if isinstance(source, SnapshotRef):
        if source.backend != backend or source.runtime != runtime:
            raise SnapshotUnusable(
                f"snapshot {source.id} was taken by {source.runtime}; this host runs "
                f"{runtime}: start from the newest image instead"
            )
        layers = [Path(source.location), *(Path(p) for p in source.layers)]
        for layer in layers:
            if not layer.is_dir():
                raise SnapshotUnusable(f"snapshot {source.id}: layer {layer} is gone")
        image_root = Path(source.image.location) / "root"
        if not source.full and not image_root.is_dir():
            raise SnapshotUnusable(
                f"snapshot {source.id}: its base image {source.image.id} is gone"
            )
        return layers if source.full else [*layers, image_root]
    image_root = Path(source.location) / "root"
    if not image_root.is_dir():
        raise SandboxError(f"image {source.id} has no root directory at {image_root}")
    return [image_root]


def listing(state_dir: Path) -> list[SnapshotRef]:
    refs = []
    root = snapshot_root(state_dir)
    if root.is_dir():
        for child in root.iterdir():
            if not child.name.startswith(".") and (child / "meta.json").exists():
                with contextlib.suppress(SandboxError):
                    refs.append(load(state_dir, child.name))
    return sorted(refs, key=lambda r: r.created_at)


def collect(
    state_dir: Path, older_than_s: float, keep: Collection[str], in_use: Collection[str]
) -> list[str]:
    """Delete snapshots older than `older_than_s` unless kept, in use, or stacked on by one
    that stays; returns the ids deleted. Unfinished captures older than an hour go too."""
    root = snapshot_root(state_dir)
    now = time.time()
    refs = {r.id: r for r in listing(state_dir)}
    staying = {
        i for i, r in refs.items() if i in keep or i in in_use or now - r.created_at < older_than_s
    }
    needed = set(staying)
    for i in staying:
        needed.update(Path(layer).parent.name for layer in refs[i].layers)
    removed = []
    for i in sorted(set(refs) - needed):
        shutil.rmtree(root / i, ignore_errors=True)
        removed.append(i)
    if root.is_dir():
        for child in root.glob(".*.partial"):
            with contextlib.suppress(OSError):
                if now - child.stat().st_mtime > PARTIAL_MAX_AGE_S:
                    shutil.rmtree(child, ignore_errors=True)
    return removed
