"""What a hostile command can no longer do to the host, on bubblewrap and gVisor: fill its
disk, leave a setuid file behind, run as a shared uid, make user namespaces, learn host paths,
or keep its mounts after its worker died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from images.layers import apply_layer
from images.sandboxes.base import Limits, SandboxSpec, SandboxUnavailable, SnapshotTooLarge
from images.sandboxes.environment import DEFAULT_HOST_UID, check_sandbox_uid
from tests.images.conftest import Starter, build_image

pytestmark = pytest.mark.slow
QUOTA = Limits(exec_timeout_s=60, disk_mb=64, disk_inodes=4096)


@pytest.fixture
def local(backend_name: str) -> str:
    if backend_name not in ("bwrap", "gvisor"):
        pytest.skip("a property of sandboxes on this host")
    if os.geteuid() != 0:
        pytest.skip("the disk quota and the sandbox uid need a root host")
    return backend_name


def host_bytes(path: Path) -> int:
    """Bytes `path` takes on the host's filesystem (mounts below it not counted)."""
    out = subprocess.run(["du", "-sxk", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) << 10


def mounts_under(path: Path) -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every host mount below `path`."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4].startswith(str(path.resolve()) + "/"):
            found.append((fields[4], set(fields[5].split(","))))
    return found


def loop_backings() -> list[str]:
    """Backing files of every attached loop device."""
    files = []
    for block in Path("/sys/block").glob("loop*"):
        backing = block / "loop" / "backing_file"
        if backing.exists():
            files.append(backing.read_text().strip())
    return files


async def no_loop_devices_under(path: Path) -> None:
    """Loop devices detach themselves when their disk is unmounted; wait for it briefly."""
    deadline = time.monotonic() + 5
    while any(f.startswith(str(path)) for f in loop_backings()):
        assert time.monotonic() < deadline, f"loop devices left: {loop_backings()}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- disk quota


@pytest.mark.usefixtures("local")
async def test_writes_past_the_disk_quota_fail_and_the_session_goes_on(
    start: Starter, state_dir: Path, tmp_path: Path
) -> None:
    before = host_bytes(state_dir)
    sandbox = await start(limits=QUOTA)
    big = await sandbox.exec(["dd", "if=/dev/zero", "of=big", "bs=1M", "count=100"])
    assert big.exit_code != 0 and "No space left on device" in big.stderr, big
    tmp = await sandbox.exec(["dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=100"])
    assert tmp.exit_code != 0 and "No space left on device" in tmp.stderr, tmp
    # What the host gave the sandbox is bounded by the quota, whatever it wrote.
    assert host_bytes(state_dir) - before <= (QUOTA.disk_mb + 4) << 20
    after = await sandbox.exec(["sh", "-c", "rm big /tmp/big && echo still here"])
    assert after.stdout.strip() == "still here", after
    files = await sandbox.exec(
        ["sh", "-c", "mkdir many && cd many && i=0; while [ $i -lt 5000 ]; do"
         " : > f$i || exit 1; i=$((i+1)); done"]
    )  # fmt: skip
    assert files.exit_code != 0 and "No space left on device" in files.stderr, files
    assert (await sandbox.exec(["rm", "-r", "many"])).exit_code == 0
    await sandbox.terminate()
    assert not mounts_under(state_dir)
    await no_loop_devices_under(tmp_path)


@pytest.mark.usefixtures("local")
async def test_the_whole_quota_is_there_for_data_whatever_the_inode_cap(start: Starter) -> None:
    # A million inodes' tables (244 MB) once came out of the quota: a 300 MB quota left 56 MB.
    sandbox = await start(limits=Limits(exec_timeout_s=60, disk_mb=64, disk_inodes=1_000_000))
    made = await sandbox.exec(["dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=60"])
    assert made.exit_code == 0, made
    over = await sandbox.exec(["dd", "if=/dev/zero", "of=big", "bs=1M", "count=8"])
    assert over.exit_code != 0 and "No space left on device" in over.stderr, over
    await sandbox.terminate()


@pytest.mark.usefixtures("local")
async def test_a_snapshot_larger_than_the_quota_is_refused(start: Starter, state_dir: Path) -> None:
    first = await start(limits=QUOTA)
    made = await first.exec(["dd", "if=/dev/urandom", "of=a.bin", "bs=1M", "count=40"])
    assert made.exit_code == 0, made
    ref = await first.snapshot()
    second = await start(ref, limits=QUOTA)
    made = await second.exec(["dd", "if=/dev/urandom", "of=b.bin", "bs=1M", "count=40"])
    assert made.exit_code == 0, made
    with pytest.raises(SnapshotTooLarge, match="NIGHTSHIFT_SANDBOX_DISK_MB"):
        await second.snapshot()
    kept = [p.name for p in (state_dir / "snapshots").iterdir()]
    assert kept == [ref.id], "a refused snapshot left files behind"
    assert (await second.exec(["true"])).exit_code == 0


# ---------------------------------------------------------------- setuid files


@pytest.mark.usefixtures("local")
async def test_setuid_bits_do_not_reach_the_host(start: Starter, state_dir: Path) -> None:
    sandbox = await start(limits=QUOTA)
    made = await sandbox.exec(
        ["sh", "-c", "cp /bin/true sneaky && mkdir shared && chmod 6755 sneaky && "
         "chmod 2775 shared && stat -c %a sneaky"]
    )  # fmt: skip
    assert made.stdout.strip() == "6755", made
    ref = await sandbox.snapshot()
    layer = Path(ref.location) / "workspace"
    for name in ("sneaky", "shared"):
        mode = os.lstat(layer / name).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(mode))
    mounts = mounts_under(state_dir)
    assert len(mounts) >= 2, mounts  # the sandbox's disk and its overlay
    for point, opts in mounts:
        assert {"nosuid", "nodev"} <= opts, (point, opts)


def test_folding_a_build_layer_strips_setuid_bits(tmp_path: Path) -> None:
    root, layer = tmp_path / "root", tmp_path / "layer"
    (root / "bin").mkdir(parents=True)
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(layer / "bin" / "tool", 0o6755)  # noqa: S103  (what a build could leave)
    os.chmod(layer / "bin", 0o2755)  # noqa: S103
    apply_layer(layer, root)
    assert stat.S_IMODE(os.lstat(root / "bin" / "tool").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(root / "bin").st_mode) == 0o755


# ---------------------------------------------------------------- the sandbox uid


@pytest.mark.usefixtures("local")
async def test_commands_run_as_a_uid_of_their_own(start: Starter) -> None:
    sandbox = await start(limits=QUOTA)
    ids = await sandbox.exec(["sh", "-c", "id -u; id -g"])
    assert ids.stdout.split() == [str(DEFAULT_HOST_UID)] * 2, ids
    assert "65534" not in ids.stdout


def _account_uid() -> tuple[str, int]:
    for line in Path("/etc/passwd").read_text().splitlines():
        name, _, uid, *_ = line.split(":")
        if int(uid) not in (0, 65534):
            return name, int(uid)
    pytest.skip("no account besides root and nobody in /etc/passwd")


def test_a_sandbox_uid_someone_else_has_is_refused() -> None:
    check_sandbox_uid(DEFAULT_HOST_UID, DEFAULT_HOST_UID)
    with pytest.raises(SandboxUnavailable, match="nobody"):
        check_sandbox_uid(65534, 65534)
    with pytest.raises(SandboxUnavailable, match="must not be 0"):
        check_sandbox_uid(0, 0)
    name, uid = _account_uid()
    with pytest.raises(SandboxUnavailable, match=f"belongs to '{name}'"):
        check_sandbox_uid(uid, DEFAULT_HOST_UID)


async def test_a_backend_with_a_shared_uid_does_not_start(tmp_path: Path) -> None:
    from images.sandboxes.bwrap import BwrapBackend

    backend = BwrapBackend(tmp_path / "state", (65534, 65534))
    image = build_image(tmp_path, backend)
    with pytest.raises(SandboxUnavailable, match="NIGHTSHIFT_SANDBOX_UID"):
        await backend.start(SandboxSpec(image, QUOTA))
    assert not mounts_under(tmp_path)


# ---------------------------------------------------------------- namespaces and host paths


async def test_bwrap_commands_cannot_make_user_namespaces(
    backend_name: str, local: str, start: Starter
) -> None:
    if backend_name != "bwrap":
        pytest.skip("gVisor's user namespaces live in its own kernel")
    sandbox = await start(limits=QUOTA)
    result = await sandbox.exec(["unshare", "-U", "true"])
    assert result.exit_code != 0 and "Operation not permitted" in result.stderr, result
    # unshare(CLONE_NEWUSER) directly: EPERM (1); clone3 (flags out of a filter's reach): ENOSYS.
    code = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.unshare(0x10000000), ctypes.get_errno()); "
        "print(libc.syscall(435, 0, 0), ctypes.get_errno())"
    )
    direct = await sandbox.exec(["python3", "-c", code])
    assert direct.stdout.split() == ["-1", "1", "-1", "38"], direct
    # Other namespaces' syscalls and ordinary forks still work.
    assert (await sandbox.exec(["sh", "-c", "true & wait"])).exit_code == 0


@pytest.mark.usefixtures("local")
async def test_no_host_path_is_visible_inside(start: Starter, state_dir: Path) -> None:
    sandbox = await start(limits=QUOTA, egress=["pypi.org"])
    seen = await sandbox.exec(
        ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; cat /proc/self/mountinfo /proc/1/mountinfo;"
         " ls -l /proc/self/fd/"]
    )  # fmt: skip
    assert seen.exit_code == 0, seen
    assert "/workspace" in seen.stdout  # the mount table was read
    install = str(Path(__file__).parents[2])
    for secret in (str(state_dir), str(state_dir.parent), "pytest-of-", install):
        assert secret not in seen.stdout, secret


# ---------------------------------------------------------------- periodic sweep

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from images.sandboxes import make_backend
    from images.sandboxes.base import ImageRef, Limits, SandboxSpec

    async def main() -> None:
        name, state, image = sys.argv[1], Path(sys.argv[2]), ImageRef(**json.loads(sys.argv[3]))
        backend = make_backend(name, state)
        sandbox = await backend.start(SandboxSpec(image, Limits(disk_mb=64, disk_inodes=4096)))
        print(sandbox.id, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_the_periodic_sweep_releases_what_a_killed_worker_left(
    local: str, backend: Any, tmp_path: Path, state_dir: Path
) -> None:
    image = build_image(tmp_path, backend)
    worker = subprocess.Popen(
        [sys.executable, "-c", CHILD, local, str(state_dir), json.dumps(asdict(image))],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert worker.stdout is not None
        orphan = (await asyncio.to_thread(worker.stdout.readline)).strip()
        assert orphan.startswith("sb-"), orphan
        left = mounts_under(state_dir / "sandboxes" / orphan)
        assert left
        # While the worker lives, its sandbox is its own: the sweep spares it.
        backend.release_stale()
        assert mounts_under(state_dir / "sandboxes" / orphan) == left
        mine = await backend.start(SandboxSpec(image, QUOTA))
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    assert backend.release_stale() >= 2  # the overlay and the disk under it
    assert not mounts_under(state_dir / "sandboxes" / orphan)
    assert not (state_dir / "sandboxes" / orphan).exists()
    # Our own live sandbox is left alone.
    assert (await mine.exec(["true"])).exit_code == 0
    await mine.terminate()
    assert not mounts_under(state_dir)
    await no_loop_devices_under(tmp_path)
