"""File access confined to one directory tree on the host, whatever symlinks it holds.

Sandboxed code controls the tree, so every path is resolved by the kernel with `openat2`'s
RESOLVE_BENEATH: `..`, absolute symlinks and symlinks that climb out are refused instead of
followed (Linux >= 5.6).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import stat
import struct

from images.sandboxes.base import FileEntry, PathEscape, SandboxFileError

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def clean_relative(path: str) -> str:
    """Normalise a workspace-relative path; refuse absolute paths and escapes up front."""
    if "\x00" in path:
        raise SandboxFileError("path contains a NUL byte")
    if path.startswith("/"):
        raise PathEscape(
            f"{path}: absolute paths are refused; use a path relative to the repository root"
        )
    norm = posixpath.normpath(path or ".")
    if norm == ".." or norm.startswith("../"):
        raise PathEscape(f"{path}: path escapes the workspace")
    return norm


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    if _SYS_OPENAT2 is None:
        raise SandboxFileError(
            f"openat2 is not known on {platform.machine()}; file tools are disabled"
        )
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.c_char_p(how),
        ctypes.c_size_t(len(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.EXDEV, errno.ELOOP):
            raise PathEscape(f"{path}: resolves outside the workspace (symlink or ..)")
        if err == errno.ENOENT:
            raise SandboxFileError(f"{path}: no such file or directory")
        if err == errno.ENOTDIR:
            raise SandboxFileError(f"{path}: a parent is not a directory")
        if err == errno.EISDIR:
            raise SandboxFileError(f"{path}: is a directory")
        raise SandboxFileError(f"{path}: {os.strerror(err)}")
    return int(fd)


class ConfinedTree:
    """Reads and writes under `root`; new files and directories get `owner` (uid, gid)."""

    def __init__(self, root: str, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner

    def _root_fd(self) -> int:
        return os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def read(self, path: str, max_bytes: int) -> bytes:
        rel = clean_relative(path)
        root = self._root_fd()
        try:
            fd = _openat2(root, rel, os.O_RDONLY)
        finally:
            os.close(root)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise SandboxFileError(f"{path}: is a directory; use list_files")
            if not stat.S_ISREG(st.st_mode):
                raise SandboxFileError(f"{path}: not a regular file")
            if st.st_size > max_bytes:
                raise SandboxFileError(
                    f"{path}: {st.st_size} bytes is more than the {max_bytes}-byte limit"
                )
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _ensure_dir(self, root: int, rel: str) -> int:
        """Open (creating as needed) directory `rel` beneath root; returns an O_PATH fd."""
        if rel in ("", "."):
            return os.dup(root)
        try:
            return _openat2(root, rel, os.O_PATH | os.O_DIRECTORY)
        except PathEscape:
            raise
        except SandboxFileError:
            pass
        parent, name = posixpath.split(rel)
        parent_fd = self._ensure_dir(root, parent)
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
                if self.owner is not None:
                    os.chown(name, *self.owner, dir_fd=parent_fd, follow_symlinks=False)
            except FileExistsError:
                pass
            return _openat2(root, rel, os.O_PATH | os.O_DIRECTORY)
        finally:
            os.close(parent_fd)

    def write(self, path: str, data: bytes) -> None:
        rel = clean_relative(path)
        if rel == ".":
            raise SandboxFileError("a file path is required")
        root = self._root_fd()
        try:
            parent, _ = posixpath.split(rel)
            os.close(self._ensure_dir(root, parent))
            fd = _openat2(root, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        finally:
            os.close(root)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SandboxFileError(f"{path}: not a regular file")
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def listdir(self, path: str, recursive: bool, limit: int) -> list[FileEntry]:
        rel = clean_relative(path)
        root = self._root_fd()
        try:
            fd = _openat2(root, rel, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            os.close(root)
        entries: list[FileEntry] = []
        prefix = "" if rel == "." else rel + "/"
        try:
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd):
                dirnames[:] = sorted(d for d in dirnames if d != ".git")
                base = "" if dirpath == "." else dirpath[2:] + "/"
                for name in sorted(dirnames) + sorted(filenames):
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    kind = (
                        "dir"
                        if stat.S_ISDIR(st.st_mode)
                        else "symlink"
                        if stat.S_ISLNK(st.st_mode)
                        else "file"
                        if stat.S_ISREG(st.st_mode)
                        else "other"
                    )
                    entries.append(FileEntry(prefix + base + name, kind, st.st_size))  # type: ignore[arg-type]
                    if len(entries) >= limit:
                        return entries
                if not recursive:
                    break
        finally:
            os.close(fd)
        return entries
