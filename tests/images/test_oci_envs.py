"""Sandboxes on a declared image, under bubblewrap and gVisor: commands run on the image's
tools and `PATH`, the host's /usr is out of sight, the sandbox's user, limits and workspace
are what they are without an image, and the platform's own git keeps working on an image
that has none."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from images.oci_store import OciStore
from images.sandboxes.base import (
    ImageRef,
    Limits,
    SandboxSpec,
    SandboxUnavailable,
    UnsupportedSetting,
)
from images.sandboxes.environment import ENVIRONMENT_FILE, ImageEnvironment, image_environment
from tests.fakes.registry import missing_tool
from tests.images.conftest import DISK_MB, FakeInternet, build_image, make_backend_for, unavailable
from tests.images.oci_fixtures import registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))


@pytest.fixture(scope="module")
def unpacked(tool_image: str, tmp_path_factory: pytest.TempPathFactory) -> ImageEnvironment:
    return OciStore(tmp_path_factory.mktemp("store") / "rootfs").pull(tool_image)


@pytest.fixture(params=["bwrap", "gvisor"])
def env_backend(
    request: pytest.FixtureRequest, tmp_path: Path, fake_internet: FakeInternet
) -> Iterator[Any]:
    reason = unavailable(request.param)
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    state.mkdir()
    backend = make_backend_for(request.param, state, fake_internet)
    yield backend
    if backend._egress is not None:
        backend._egress.shutdown()


def image_on(root: Path, backend: Any, environment: ImageEnvironment) -> ImageRef:
    image = build_image(root, backend)
    Path(image.location, ENVIRONMENT_FILE).write_text(json.dumps(asdict(environment)))
    return image


@pytest.fixture
async def sandbox(
    env_backend: Any, unpacked: ImageEnvironment, tmp_path: Path
) -> AsyncIterator[Any]:
    image = image_on(tmp_path, env_backend, unpacked)
    box = await env_backend.start(
        SandboxSpec(image, limits=Limits(exec_timeout_s=60, disk_mb=DISK_MB))
    )
    yield box
    await box.terminate()
    assert not env_backend.live


async def sh(box: Any, script: str) -> Any:
    return await box.exec(["/bin/sh", "-c", script])


async def test_commands_run_on_the_image_tools(sandbox: Any) -> None:
    found = await sh(sandbox, "only-in-image && command -v only-in-image")
    assert found.ok, found.stderr
    assert found.stdout.splitlines() == ["from-image", "/usr/bin/only-in-image"]
    host_tool = await sh(sandbox, "ls /usr/local/bin; test -e /usr/bin/python3 && echo host")
    assert "host" not in host_tool.stdout
    assert "No such file" in host_tool.stderr  # the image has no /usr/local at all
    release = await sandbox.exec(["cat", "/etc/os-release"])
    assert release.stdout == "ID=nightshift-test\n"


async def test_image_env_is_honoured_but_not_its_user(sandbox: Any) -> None:
    result = await sandbox.exec(["env"])
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert env["PATH"] == "/opt/tools:/usr/bin:/bin"
    assert env["GREETING"] == "hi"
    assert env["HOME"] == "/home/agent"
    assert env["NO_COLOR"] == "1" and env["TERM"] == "dumb"
    who = await sandbox.exec(["id", "-u"])
    assert who.stdout.strip() == str(sandbox.uid)
    assert who.stdout.strip() != "0"


async def test_image_tree_is_read_only_and_workspace_writable(sandbox: Any) -> None:
    denied = await sh(sandbox, "echo x > /usr/bin/only-in-image")
    assert not denied.ok
    wrote = await sh(sandbox, "echo hi > note.txt && cat note.txt && pwd")
    assert wrote.stdout.split() == ["hi", "/workspace"]
    assert await sandbox.read_file("note.txt") == b"hi\n"
    passwd = await sandbox.exec(["cat", "/etc/passwd"])
    assert f"agent:x:{sandbox.uid}:" in passwd.stdout


async def test_platform_git_works_on_an_image_without_git(sandbox: Any) -> None:
    assert not (await sh(sandbox, "command -v git")).ok  # the image has none
    await sandbox.write_file("a.txt", b"one\n")
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "a.txt"],
        ["git", "-c", "user.name=N", "-c", "user.email=n@example.com", "commit", "-qm", "one"],
    ):
        done = await sandbox.exec(argv)
        assert done.ok, done.stderr
    log = await sandbox.exec(["git", "log", "--format=%s"])
    assert log.stdout == "one\n"


async def test_limits_hold_on_an_image(sandbox: Any) -> None:
    result = await sandbox.exec(["sleep", "5"], timeout=0.5)
    assert result.timed_out and result.ended_by == "timeout"


async def test_snapshot_starts_on_the_same_image(
    env_backend: Any, sandbox: Any, tmp_path: Path
) -> None:
    await sandbox.write_file("kept.txt", b"kept\n")
    snap = await sandbox.snapshot()
    again = await env_backend.start(
        SandboxSpec(snap, limits=Limits(exec_timeout_s=60, disk_mb=DISK_MB))
    )
    try:
        result = await sh(again, "cat kept.txt && only-in-image")
        assert result.stdout == "kept\nfrom-image\n"
    finally:
        await again.terminate()


async def test_egress_is_refused_on_an_image_without_python(
    env_backend: Any, unpacked: ImageEnvironment, tmp_path: Path
) -> None:
    image = image_on(tmp_path, env_backend, unpacked)
    with pytest.raises(UnsupportedSetting, match="team/tools:1 has none"):
        await env_backend.start(
            SandboxSpec(image, limits=Limits(disk_mb=DISK_MB), egress=("pypi.org",))
        )
    assert not env_backend.live


def test_a_gone_rootfs_is_named(tmp_path: Path) -> None:
    gone = ImageEnvironment("sha256:" + "0" * 64, "example.com/x:1", str(tmp_path / "nope"))
    image_dir = tmp_path / "img"
    image_dir.mkdir()
    (image_dir / ENVIRONMENT_FILE).write_text(json.dumps(asdict(gone)))
    ref = ImageRef("i", "r", "0" * 40, "bwrap", str(image_dir), "x", time.time())
    with pytest.raises(SandboxUnavailable, match="rebuild the image"):
        image_environment(ref)
