"""Limits of the bubblewrap backend beyond the conformance suite: the
fallbacks for hosts without writable cgroups (RLIMIT_AS for memory, RLIMIT_NPROC inside a user
namespace per command for processes)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from images.sandboxes.base import ExecResult, ImageRef, Limits, SandboxSpec
from images.sandboxes.bwrap import BwrapBackend
from images.sandboxes.environment import default_owner
from images.sandboxes.limits import (
    NO_CGROUPS,
    SandboxCgroup,
    detect,
    join_and_exec,
    rlimit_script,
    userns_available,
)
from tests.images.conftest import build_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


async def _run(
    backend: BwrapBackend, image: ImageRef, limits: Limits, argv: list[str]
) -> ExecResult:
    sandbox = await backend.start(SandboxSpec(image, limits))
    try:
        return await sandbox.exec(argv, timeout=120)
    finally:
        await sandbox.terminate()


@pytest.mark.skipif(not userns_available(), reason="no user namespaces on this host")
async def test_without_cgroups_a_fork_bomb_is_held_per_command(tmp_path: Path) -> None:
    backend = BwrapBackend(tmp_path / "state", default_owner(), cgroups=NO_CGROUPS)
    image = build_image(tmp_path, backend)
    sandbox = await backend.start(SandboxSpec(image, Limits(pids=24)))
    other = await backend.start(SandboxSpec(image, Limits(pids=24)))
    try:
        bomb = asyncio.ensure_future(
            sandbox.exec(["bash", "-c", "b() { b | b & }; b; sleep 3; echo done"], timeout=30)
        )
        await asyncio.sleep(1)
        # Another sandbox of the same host uid still forks: the count is not per host uid.
        busy = await other.exec(
            ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 0.2 & done; wait; echo forked"]
        )
        assert busy.stdout.strip() == "forked", busy
        result = await bomb
        # 254: the bomb kept every pid of the sandbox taken until bash gave up forking `sleep`
        # after its retries (a loaded machine); held all the same.
        assert result.exit_code in (0, 124, 254)
        assert "fork" in result.stderr or result.timed_out
        t0 = time.monotonic()
        subprocess.run(["true"], check=True)
        assert time.monotonic() - t0 < 10
    finally:
        await sandbox.terminate()
        await other.terminate()


async def test_without_a_memory_cgroup_allocations_fail_under_rlimit_as(tmp_path: Path) -> None:
    backend = BwrapBackend(tmp_path / "state", default_owner(), cgroups=NO_CGROUPS)
    image = build_image(tmp_path, backend)
    result = await _run(
        backend,
        image,
        Limits(memory_mb=256),
        ["python3", "-c", "b = bytearray(600 * 1024 * 1024)"],
    )
    assert result.exit_code == 1 and "MemoryError" in result.stderr


def test_rlimit_script_sets_soft_cpu_below_hard() -> None:
    lines = rlimit_script(Limits(cpu_seconds=10), NO_CGROUPS)
    assert "ulimit -S -t 10" in lines and "ulimit -H -t 15" in lines
    assert any(line.startswith("ulimit -v ") for line in lines)
    soft = lines.index("ulimit -S -t 10")
    assert soft < lines.index("ulimit -H -t 15")  # soft first: hard may not drop below it


def test_join_and_exec_joins_every_cgroup_before_running(tmp_path: Path) -> None:
    procs = [tmp_path / "a.procs", tmp_path / "b.procs"]
    for p in procs:
        p.write_text("")
    argv = join_and_exec([str(p) for p in procs], ["ulimit -c 0"], ["sh", "-c", "echo $$"])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    assert procs[0].read_text().strip() == out == procs[1].read_text().strip()
    failing = join_and_exec([str(tmp_path / "missing" / "procs")], [], ["true"])
    assert subprocess.run(failing, capture_output=True, check=False).returncode == 125


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are only ours as root")
def test_sandbox_cgroup_lifecycle() -> None:
    layout = detect()
    if layout.pids is None and layout.memory is None:
        pytest.skip("no writable cgroups on this host")
    cgroup = SandboxCgroup(layout, f"sb-test{os.getpid()}", Limits(memory_mb=128, pids=20))
    cgroup.create()
    try:
        if cgroup.pids is not None:
            assert (cgroup.pids / "pids.max").read_text().strip() == "20"
        if cgroup.memory is not None and layout.memory is not None and layout.memory.version == 1:
            assert int((cgroup.memory / "memory.limit_in_bytes").read_text()) == 128 << 20
        proc = subprocess.Popen(join_and_exec(cgroup.procs_files(), [], ["sleep", "60"]))
        time.sleep(0.3)
        cgroup.destroy()
        assert proc.wait(10) == -9
        for path in (cgroup.pids, cgroup.memory, cgroup.unified):
            assert path is None or not path.exists()
    finally:
        cgroup.destroy()
