"""A bubblewrap sandbox's commands start in a mount namespace of its own that holds the host's
mounts and this sandbox's, none of the other sandboxes' (`images/sandboxes/mountns.py`): what
bwrap reads per bind then stays the same size however many sandboxes run. Root hosts only
(elsewhere sandboxes mount nothing)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.mountns import mount_points
from tests.images.conftest import DISK_MB, only_bwrap

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or DISK_MB == 0, reason="sandboxes mount their disks on root hosts only"
)


backend_name = pytest.fixture(name="backend_name")(only_bwrap)


@pytest.fixture
def crowded(backend: Any) -> Any:
    """A host this backend counts as crowded from its second sandbox on (16 by default)."""
    backend.namespace_from = 2
    return backend


def _mounts_seen_by(namespace_fd: int) -> list[str]:
    """The mount points a command of the sandbox starts among."""
    table = subprocess.run(
        [
            "nsenter",
            f"--mount=/proc/{os.getpid()}/fd/{namespace_fd}",
            "cat",
            "/proc/self/mountinfo",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[4] for line in table.splitlines()]


async def test_each_sandbox_starts_its_commands_among_its_own_mounts_only(
    start: Any, crowded: Any, state_dir: Path
) -> None:
    boxes = [await start() for _ in range(4)]
    for box in boxes:
        assert (await box.exec(["true"])).ok
        assert box.namespace_fd is None  # one command: not worth a namespace yet
        assert (await box.exec(["true"])).ok
    root = str(state_dir / "sandboxes")
    on_host = mount_points(root)
    assert on_host[0] == root and len(on_host) >= 1 + 2 * len(boxes), on_host  # disk, overlay
    for box in boxes:
        assert box.namespace_fd is not None
        seen = _mounts_seen_by(box.namespace_fd)
        under = [t for t in seen if t == root or t.startswith(root + "/")]
        mine = [t for t in under if t == str(box.dir) or t.startswith(f"{box.dir}/")]
        assert len(mine) >= 3 and mine == under, (box.id, under)  # itself, disk, overlay

    # Commands there see their own sandbox, and only it.
    assert (await boxes[0].exec(["sh", "-c", "echo zero > mine.txt"])).ok
    assert (boxes[0].ws.merged / "workspace" / "mine.txt").read_text() == "zero\n"
    assert (await boxes[1].exec(["cat", "mine.txt"])).exit_code != 0
    # A network shared between commands is joined from the same namespace.
    await boxes[2].share_network()
    served = await boxes[2].exec(["sh", "-c", "echo $$ > /tmp/pid && cat /tmp/pid"])
    assert served.ok and served.stdout.strip().isdigit(), served


async def test_the_namespace_and_the_directorys_bind_go_with_the_last_sandbox(
    start: Any, crowded: Any, state_dir: Path
) -> None:
    box, other = await start(), await start()
    assert (await box.exec(["true"])).ok and (await box.exec(["true"])).ok
    await other.terminate()
    fd = box.namespace_fd
    assert fd is not None
    held = os.readlink(f"/proc/self/fd/{fd}")
    assert held.startswith("mnt:[")
    await box.terminate()
    assert box.namespace_fd is None
    try:
        now: str | None = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        now = None  # closed
    assert now != held  # closed, or another file since
    assert mount_points(str(state_dir / "sandboxes")) == []  # nothing left mounted


async def test_a_foreign_mount_under_the_directory_is_never_hidden(
    start: Any, crowded: Any, state_dir: Path
) -> None:
    """Another process's sandbox already mounted there: binding the directory over it would
    hide it from its own paths, so this process's sandboxes go without a namespace (their
    commands start in the host's, as they did before) until it is gone."""
    foreign = state_dir / "sandboxes" / "sb-1-foreign"
    foreign.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(foreign)], check=True)
    try:
        (foreign / "mark").write_text("theirs")
        box, _crowd = await start(), await start()
        for _ in range(2):
            done = await box.exec(["sh", "-c", "echo ok"])
            assert done.stdout == "ok\n", done
        assert box.namespace_fd is None
        assert (foreign / "mark").read_text() == "theirs"  # still reachable where it is
        assert str(state_dir / "sandboxes") not in mount_points(str(state_dir / "sandboxes"))
    finally:
        subprocess.run(["umount", str(foreign)], check=True)


def test_the_sweep_after_a_process_takes_its_bind_unless_something_is_under_it(
    state_dir: Path,
) -> None:
    """What a crashed server leaves: the directory's bind. The sweep of the next start (or of
    `bench load` after its server) removes it, but never while another process's sandbox is
    mounted under it."""
    from images.sandboxes.mountns import SandboxesRoot
    from images.sandboxes.overlay import release_stale_mounts

    root = state_dir / "sandboxes"
    left = SandboxesRoot(root)
    assert left.enter()  # and never leaves: the process is gone
    other = root / "sb-1-foreign"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", str(other)], check=True)
    try:
        release_stale_mounts(root, {"sb-1-foreign"})  # another live process's sandbox
        assert mount_points(str(root)) == [str(root), str(other)]
    finally:
        subprocess.run(["umount", str(other)], check=True)
    release_stale_mounts(root, set())
    assert mount_points(str(root)) == []


async def test_a_quiet_host_keeps_its_commands_in_the_hosts_namespace(start: Any) -> None:
    """Below `NAMESPACE_FROM` live sandboxes joining a namespace would cost a command more
    than the few mounts it hides."""
    boxes = [await start() for _ in range(3)]
    for box in boxes:
        for _ in range(3):
            assert (await box.exec(["true"])).ok
        assert box.namespace_fd is None


async def test_file_tools_leave_nothing_holding_the_sandboxs_disk(
    start: Any, state_dir: Path
) -> None:
    """A handle the file tools kept into a sandbox's tree held its disk after the unmount (a
    loop device and a deleted image per session) and so the sandboxes' directory's bind."""
    box = await start()
    assert (await box.exec(["sh", "-c", "echo made > made.txt"])).ok
    await box.write_file("notes/new.txt", b"new")
    assert await box.read_file("made.txt") == b"made\n"
    assert await box.read_file("README.md") == b"# demo\n"
    assert [e.path for e in await box.list_files(".")]
    assert await box.copy_out("made.txt", state_dir / "copied.txt", 1024) == 5
    await box.terminate()
    assert mount_points(str(state_dir / "sandboxes")) == []
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(box.dir) not in loops, loops
