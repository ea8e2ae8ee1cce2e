"""A seccomp filter that keeps sandboxed commands from making user namespaces.

Under bubblewrap as root there is no user namespace of ours for `--disable-userns` (which
needs `--unshare-user`) to lock, and with one bwrap would map the command to host root; so the
same effect comes from the filter Docker's default profile uses: `unshare` and `clone` with
`CLONE_NEWUSER` fail with EPERM, and `clone3`, whose flags a filter cannot read, fails with
ENOSYS so that libc falls back to `clone`. A syscall of a foreign architecture (x32, i386)
fails with EPERM, so it cannot step around the numbers checked here.

The program is classic BPF, as `bwrap --seccomp FD` takes it.
"""

from __future__ import annotations

import errno
import platform
import struct
from pathlib import Path

from images.sandboxes.base import UnsupportedSetting

CLONE_NEWUSER = 0x10000000
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# (clone, unshare, clone3) per architecture.
SYSCALLS = {"x86_64": (56, 272, 435), "aarch64": (220, 97, 435)}
X32_BIT = 0x40000000

_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low word, little-endian)


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_userns_filter(machine: str | None = None) -> bytes:
    """The filter for this machine's architecture."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        raise UnsupportedSetting(
            f"no seccomp filter against user namespaces for {machine}; sandboxes could create "
            "them, so bubblewrap as root is refused here"
        )
    clone, unshare, clone3 = SYSCALLS[machine]
    deny, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    prog = [
        _op(_LD_W_ABS, _ARCH),
        _op(_JEQ_K, AUDIT_ARCH[machine], jt=1),
        _op(_RET_K, deny),
        _op(_LD_W_ABS, _NR),
        _op(_JGE_K, X32_BIT, jt=6),  # -> deny
        _op(_JEQ_K, clone3, jt=6),  # -> enosys
        _op(_JEQ_K, clone, jt=1),  # -> flags
        _op(_JEQ_K, unshare, jf=2),  # -> allow
        _op(_LD_W_ABS, _ARG0),  # flags
        _op(_JSET_K, CLONE_NEWUSER, jt=1),  # -> deny
        _op(_RET_K, _ALLOW),
        _op(_RET_K, deny),
        _op(_RET_K, enosys),
    ]
    return b"".join(prog)


def write_filter(path: Path) -> Path:
    """Write the filter to `path` once (bwrap reads it from a descriptor per command)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(no_userns_filter())
        partial.rename(path)
    return path
