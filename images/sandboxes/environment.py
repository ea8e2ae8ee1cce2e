"""What a local sandbox is given: the paths it sees, its /etc, its environment, its uid.

Shared by bubblewrap and gVisor. The sandbox's /etc holds copies of a few harmless host files
and our own `passwd`, `hosts`, ...; a command's environment starts empty (nothing of the
host's), and the host-side launcher (bwrap, runsc) gets only `PATH`. When the host process is
root, commands run as a host uid of their own (`DEFAULT_HOST_UID` unless configured), which
must be nobody else's: `check_sandbox_uid` refuses one that is an account, a group or part of a
subordinate id range.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from images.ansi import NO_COLOR_ENV
from images.sandboxes.base import (
    HOME,
    SANDBOX_PATH,
    ImageRef,
    SandboxSpec,
    SandboxUnavailable,
    SnapshotRef,
    UnsupportedSetting,
)
from images.sandboxes.egress import PROXY_PORT
from images.sandboxes.limits import pid_alive

SANDBOX_UID = 1000  # the uid commands see inside the sandbox when the host is not root
DEFAULT_HOST_UID = 65600
"""Host uid of sandboxed commands when the server is root (`NIGHTSHIFT_SANDBOX_UID`): above
the 16-bit range where distributions, systemd's DynamicUser (61184-65519) and `nobody`
(65534) allocate, below the ranges `useradd` hands out in /etc/subuid (100000 and up)."""
OWN_ACCOUNT = "nightshift-sandbox"
"""The one account name the sandbox uid may carry (an operator may create it for `ps`)."""
SANDBOX_PYTHON = "/usr/bin/python3"
BRIDGE_SOURCE = Path(__file__).with_name("bridge.py")
RUN_DIR = "/run/nightshift"
BRIDGE_PATH = f"{RUN_DIR}/bridge.py"
EGRESS_DIR = f"{RUN_DIR}/egress"
EGRESS_SOCKET = f"{EGRESS_DIR}/proxy.sock"
BRIDGE_COMMAND = (SANDBOX_PYTHON, "-I", "-S", BRIDGE_PATH, str(PROXY_PORT), EGRESS_SOCKET)
"""The loopback bridge to the egress proxy's socket (`bridge.py`); its own arguments follow."""
ETC_PATHS = (
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/bash.bashrc",
    "/etc/profile",
    "/etc/inputrc",
    "/etc/python3",
    "/etc/python3.11",
)


def build_etc(
    state_dir: Path, name: str, owner: tuple[int, int] | None, extra: dict[str, str]
) -> Path:
    """The sandbox's /etc: copies of the harmless host files above plus our own `passwd`,
    `hosts`, ... Built once per server process (so one bind mount per command, not twenty)."""
    uid, gid = owner or (SANDBOX_UID, SANDBOX_UID)
    root = state_dir / "etc"
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        pid = child.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(child, ignore_errors=True)
    target = root / f"{name}-{uid}-{os.getpid()}"
    if target.is_dir():
        return target
    partial = root / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o755)
    for path in ETC_PATHS:
        src, dest = Path(path), partial / Path(path).relative_to("/etc")
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dest, symlinks=True)
        elif src.exists() or src.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest, follow_symlinks=False)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{uid}:{gid}:agent:{HOME}:/bin/bash\n",
        "group": f"root:x:0:\nagent:x:{gid}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
        "hostname": "sandbox\n",
        "resolv.conf": "",
        **extra,
    }
    for file_name, text in files.items():
        (partial / file_name).write_text(text)
        os.chmod(partial / file_name, 0o644)
    os.chmod(partial, 0o755)  # noqa: S103  (the sandbox's /etc, read-only inside)
    try:
        partial.rename(target)
    except OSError:  # another backend of this process won the race
        shutil.rmtree(partial, ignore_errors=True)
    return target


def default_owner(uid: int = DEFAULT_HOST_UID) -> tuple[int, int] | None:
    """Host uid/gid for sandboxed processes: `uid` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    return (uid, uid)


def _id_file(path: str) -> list[list[str]]:
    try:
        return [line.split(":") for line in Path(path).read_text().splitlines() if ":" in line]
    except OSError:
        return []


def check_sandbox_uid(uid: int, gid: int) -> None:
    """Refuse a sandbox uid/gid that anyone else on the host has: an account or group (other
    than `OWN_ACCOUNT`), `nobody`, root, or an id inside a subordinate range."""
    setting = "NIGHTSHIFT_SANDBOX_UID"
    if uid == 0 or gid == 0:
        raise SandboxUnavailable(f"{setting} must not be 0: sandboxed commands would be root")
    if uid == 65534 or gid == 65534:
        raise SandboxUnavailable(
            f"{setting}=65534 is the system's `nobody`, which other services share; choose an "
            f"id no one has (default {DEFAULT_HOST_UID})"
        )
    for path, wanted in (("/etc/passwd", uid), ("/etc/group", gid)):
        for fields in _id_file(path):
            if len(fields) > 2 and fields[2] == str(wanted) and fields[0] != OWN_ACCOUNT:
                raise SandboxUnavailable(
                    f"{setting}: id {wanted} belongs to {fields[0]!r} in {path}; sandboxed "
                    f"commands need an id of their own (default {DEFAULT_HOST_UID}, or name the "
                    f"account {OWN_ACCOUNT!r})"
                )
    for path, wanted in (("/etc/subuid", uid), ("/etc/subgid", gid)):
        for fields in _id_file(path):
            with contextlib.suppress(ValueError, IndexError):
                first, count = int(fields[1]), int(fields[2])
                if first <= wanted < first + count:
                    raise SandboxUnavailable(
                        f"{setting}: id {wanted} is inside {fields[0]!r}'s range in {path} "
                        f"({first}-{first + count - 1}); choose one outside it"
                    )


def proxy_env() -> dict[str, str]:
    url = f"http://127.0.0.1:{PROXY_PORT}"
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


def sandbox_env(
    spec_env: Mapping[str, str],
    egress: bool,
    env: Mapping[str, str] | None,
    image_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A command's whole environment: ours, the declared image's (its `PATH` first of all;
    never its `HOME` or `USER`: the sandbox's user stays), the proxy's when egress is on, the
    spec's, the call's."""
    full = {"PATH": SANDBOX_PATH, "HOME": HOME, "LANG": "C.UTF-8", "USER": "agent"}
    full.update({k: v for k, v in (image_env or {}).items() if k not in ("HOME", "USER")})
    full.update(NO_COLOR_ENV)
    if egress:
        full.update(proxy_env())
    full.update(spec_env)
    full.update(env or {})
    return full


def host_env() -> dict[str, str]:
    """The environment of the host-side launcher (bwrap, runsc): nothing of ours leaks in."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


ENVIRONMENT_FILE = "environment.json"
"""Beside an image's `root/`: the declared environment it was built on (absent: host tools)."""
OWN_TOPS = frozenset({"etc", "tmp", "proc", "dev", "sys", "home", "run", "workspace"})
"""Top-level directories a sandbox gets from us, never from a declared image."""


@dataclass(frozen=True)
class ImageEnvironment:
    """A declared image unpacked on this host: its root filesystem and its config's `Env`."""

    digest: str
    reference: str
    rootfs: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""

    @staticmethod
    def load(path: Path) -> ImageEnvironment:
        return ImageEnvironment(**json.loads(path.read_text()))

    def has_tool(self, name: str) -> bool:
        """Whether `name` is on the image's `PATH` (looked up in its tree, not run)."""
        path = self.env.get("PATH", SANDBOX_PATH)
        root = Path(self.rootfs)
        for directory in path.split(":"):
            rel = directory.strip("/")
            if rel and os.path.lexists(root / rel / name):
                return True
        return False

    def tops(self) -> list[tuple[str, str | None]]:
        """The image's top-level entries a sandbox sees: `(name, symlink target or None)`."""
        out: list[tuple[str, str | None]] = []
        for child in sorted(Path(self.rootfs).iterdir(), key=lambda p: p.name):
            if child.name in OWN_TOPS:
                continue
            if child.is_symlink():
                out.append((child.name, os.readlink(child)))
            elif child.is_dir():
                out.append((child.name, None))
        return out


def image_environment(source: ImageRef | SnapshotRef) -> ImageEnvironment | None:
    """The declared environment a sandbox from `source` runs on (None: the host's tools)."""
    image = source.image if isinstance(source, SnapshotRef) else source
    path = Path(image.location) / ENVIRONMENT_FILE
    if not path.is_file():
        return None
    found = ImageEnvironment.load(path)
    if not Path(found.rootfs).is_dir():
        raise SandboxUnavailable(
            f"image {image.id} runs on {found.reference} ({found.digest}), whose root "
            "filesystem is gone from this host: rebuild the image"
        )
    return found


def environment_layer(
    state_dir: Path, environment: ImageEnvironment, owner: tuple[int, int] | None
) -> Path:
    """The overlay layer between a declared image and the repo's image: our `/etc` files
    (`passwd`, `hosts`, ...) over the image's own, so its `/etc` stays the image's (its CA
    certificates, its loader's cache) while the sandbox's user, host name and resolver are
    ours. Built once per digest and uid."""
    uid, gid = owner or (SANDBOX_UID, SANDBOX_UID)
    name = f"{environment.digest.replace(':', '-')}-{uid}"
    target = state_dir / "environments" / name
    if target.is_dir():
        return target
    partial = target.with_name(f".{name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "etc").mkdir(parents=True)
    shell = "/bin/sh" if os.path.lexists(Path(environment.rootfs) / "bin/sh") else "/nonexistent"
    files = {
        "passwd": f"root:x:0:0:root:/root:/sbin/nologin\nagent:x:{uid}:{gid}:agent:{HOME}:{shell}\n",
        "group": f"root:x:0:\nagent:x:{gid}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
        "hostname": "sandbox\n",
        "resolv.conf": "",
    }
    for file_name, text in files.items():
        (partial / "etc" / file_name).write_text(text)
        os.chmod(partial / "etc" / file_name, 0o644)
    os.chmod(partial / "etc", 0o755)  # noqa: S103  (the sandbox's /etc, read-only inside)
    try:
        partial.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def environment_lowers(
    state_dir: Path,
    source: ImageRef | SnapshotRef,
    lowers: list[Path],
    owner: tuple[int, int] | None,
) -> tuple[list[Path], ImageEnvironment | None]:
    """The overlay layers of a sandbox from `source`, newest first: the repo's image (and
    snapshots), then, for a declared image, our /etc files and the image's root filesystem
    (a whole-tree snapshot already holds both)."""
    environment = image_environment(source)
    if environment is None or (isinstance(source, SnapshotRef) and source.full):
        return lowers, environment
    layer = environment_layer(state_dir, environment, owner)
    return [*lowers, layer, Path(environment.rootfs)], environment


def refuse_for_environment(spec: SandboxSpec, environment: ImageEnvironment | None) -> None:
    """Refuse an egress allowlist when the sandbox's tree lacks the python its loopback
    bridge runs on (the host's, or the declared image's)."""
    if not spec.egress:
        return
    where = Path(environment.rootfs) if environment is not None else Path("/")
    if not (where / SANDBOX_PYTHON.lstrip("/")).exists():
        what = f"the image {environment.reference}" if environment is not None else "the host"
        raise UnsupportedSetting(
            f"egress needs {SANDBOX_PYTHON} inside the sandbox for its loopback bridge, and "
            f"{what} has none; refusing the allowlist rather than ignoring it"
        )


def runs_on_image(environment: ImageEnvironment, argv: Sequence[str]) -> bool:
    """Whether `argv` runs on the declared image's tools. The platform's own `git` (it commits,
    bundles and syncs inside the sandbox) runs on the host's when the image has none."""
    return not (argv and argv[0] == "git" and not environment.has_tool("git"))
