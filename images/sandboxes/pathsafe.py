"""File access confined to one directory tree on the host, whatever symlinks it holds.

Sandboxed code controls the tree, so every path is resolved by the kernel with `openat2`'s
RESOLVE_BENEATH: `..`, absolute symlinks and symlinks that climb out are refused instead of
followed (Linux >= 5.6).

Sandboxed code also chooses what kind of file sits at a path. A FIFO or a socket opened for
reading or writing can block the opening thread forever (and a file lease for up to the
kernel's lease-break time), so every path is first opened with O_PATH, which never blocks,
and anything that is not a regular file or a directory is refused before it is opened for
real; the real open is O_NONBLOCK and is checked to be the same file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import stat
import struct

from images.sandboxes.base import FileEntry, FileKind, FileTooLarge, PathEscape, SandboxFileError

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


def _openat2_raw(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """The new fd, or minus the errno."""
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
    return int(fd) if fd >= 0 else -ctypes.get_errno()


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    return _opened(_openat2_raw(dir_fd, path, flags, mode), path)


def _opened(fd: int, path: str) -> int:
    """`fd` from `_openat2_raw`, or the error it names raised."""
    if fd < 0:
        err = -fd
        if err in (errno.EXDEV, errno.ELOOP):
            raise PathEscape(f"{path}: resolves outside the workspace (symlink or ..)")
        if err == errno.ENOENT:
            raise SandboxFileError(f"{path}: no such file or directory")
        if err == errno.ENOTDIR:
            raise SandboxFileError(f"{path}: a parent is not a directory")
        if err == errno.EISDIR:
            raise SandboxFileError(f"{path}: is a directory")
        if err == errno.ENXIO:  # a FIFO without a reader, a socket: swapped in after a probe
            raise SandboxFileError(f"{path} is not a regular file")
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise SandboxFileError(
                f"{path}: a process in the sandbox holds a lease on it; try again"
            )
        raise SandboxFileError(f"{path}: {os.strerror(err)}")
    return int(fd)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)
CHUNK = 1 << 20


def describe(mode: int) -> str:
    """What kind of special file `mode` is, for messages the model reads."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


class ConfinedTree:
    """Reads and writes under `root`; new files and directories get `owner` (uid, gid)."""

    def __init__(self, root: str, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner

    def _root_fd(self) -> int:
        return os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _probe(self, root: int, rel: str, follow: bool) -> os.stat_result | None:
        """What sits at `rel` (None: nothing), found without opening it for I/O."""
        flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
        fd = _openat2_raw(root, rel, flags)
        if fd == -errno.ENOENT:
            return None
        # Closed whatever happens: a handle kept here would hold the sandbox's disk after
        # its unmount (a loop device and a deleted image per session, the sandboxes' bind).
        fd = _opened(fd, rel)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _open_regular(self, path: str, flags: int, mode: int = 0) -> tuple[int, os.stat_result]:
        """Open the regular file at `path` without ever blocking; refuse any other kind.

        Writes (O_CREAT) do not follow a symlink at the last component; reads follow one that
        stays beneath the root.
        """
        rel = clean_relative(path)
        writing = bool(flags & os.O_CREAT)
        if rel == "." and writing:
            raise SandboxFileError("a file path is required")
        nofollow = os.O_NOFOLLOW if writing else 0
        root = self._root_fd()
        try:
            if writing:
                os.close(self._ensure_dir(root, posixpath.dirname(rel)))
            before = self._probe(root, rel, follow=not writing)
            if before is None and not writing:
                raise SandboxFileError(f"{path}: no such file or directory")
            if before is not None and stat.S_ISLNK(before.st_mode):
                raise PathEscape(f"{path}: is a symlink; file writes do not follow symlinks")
            if before is not None:
                _require_regular(before, path)
            fd = _openat2(root, rel, flags | os.O_NONBLOCK | os.O_NOCTTY | nofollow, mode)
        finally:
            os.close(root)
        st = os.fstat(fd)
        if before is not None and (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise SandboxFileError(f"{path}: changed while it was being opened; try again")
        try:
            _require_regular(st, path)
        except SandboxFileError:
            os.close(fd)
            raise
        return fd, st

    def read(self, path: str, max_bytes: int) -> bytes:
        fd, st = self._open_regular(path, os.O_RDONLY)
        try:
            if st.st_size > max_bytes:
                raise FileTooLarge(
                    f"{path}: {st.st_size} bytes is more than the {max_bytes}-byte limit"
                )
            chunks, size = [], 0
            while size <= max_bytes and (chunk := os.read(fd, CHUNK)):
                chunks.append(chunk)
                size += len(chunk)
            if size > max_bytes:
                raise FileTooLarge(f"{path}: grew past the {max_bytes}-byte limit while read")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def copy_out(self, path: str, dest: str, max_bytes: int) -> int:
        """Copy the file at `path` to `dest` (a new host file, mode 0600) in chunks."""
        fd, st = self._open_regular(path, os.O_RDONLY)
        try:
            if st.st_size > max_bytes:
                raise FileTooLarge(
                    f"{path}: {st.st_size} bytes is more than the {max_bytes}-byte limit"
                )
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            copied = 0
            try:
                while chunk := os.read(fd, CHUNK):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise FileTooLarge(
                            f"{path}: grew past the {max_bytes}-byte limit while copied"
                        )
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
            except BaseException:
                os.close(out)
                os.unlink(dest)
                raise
            os.close(out)
            return copied
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
        fd, _ = self._open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
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
            found = self._probe(root, rel, follow=True)
            if found is None:
                raise SandboxFileError(f"{path}: no such file or directory")
            if not stat.S_ISDIR(found.st_mode):
                what = "a regular file" if stat.S_ISREG(found.st_mode) else describe(found.st_mode)
                raise SandboxFileError(f"{path} is {what}, not a directory")
            fd = _openat2(root, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        finally:
            os.close(root)
        entries: list[FileEntry] = []
        prefix = "" if rel == "." else rel + "/"
        try:
            # fwalk opens sub-directories O_NONBLOCK and checks each is the one it listed, and
            # never opens anything else: FIFOs and sockets are only stat'ed.
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=fd):
                dirnames[:] = sorted(d for d in dirnames if d != ".git")
                base = "" if dirpath == "." else dirpath[2:] + "/"
                for name in sorted(dirnames) + sorted(filenames):
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    kind: FileKind = (
                        "dir"
                        if stat.S_ISDIR(st.st_mode)
                        else "symlink"
                        if stat.S_ISLNK(st.st_mode)
                        else "file"
                        if stat.S_ISREG(st.st_mode)
                        else "other"
                    )
                    entries.append(FileEntry(prefix + base + name, kind, st.st_size))
                    if len(entries) >= limit:
                        return entries
                if not recursive:
                    break
        finally:
            os.close(fd)
        return entries


def _require_regular(st: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise SandboxFileError(f"{path}: is a directory; use list_files")
    if not stat.S_ISREG(st.st_mode):
        raise SandboxFileError(f"{path} is {describe(st.st_mode)}, not a regular file")
