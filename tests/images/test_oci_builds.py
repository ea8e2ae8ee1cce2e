"""Image builds on a declared environment, end to end on real bubblewrap, git, skopeo, umoci,
buildah and a registry on 127.0.0.1: set-up runs on the image's tools, an unchanged digest is
never pulled again, a moved tag is, and a devcontainer.json image or a Dockerfile is used."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.schemas import RepoCreate
from images.environments import effective_origins
from images.image_jobs import build_images
from images.sandboxes.base import Limits, SandboxSpec
from tests.factories import make_repo
from tests.fakes.registry import FakeRegistry, missing_tool, push_image
from tests.images.conftest import DISK_MB, commit
from tests.images.oci_fixtures import BASH, registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real_run = subprocess.run

    def record(argv: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append([str(a) for a in argv])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", record)
    return calls


async def test_setup_runs_on_the_declared_image(rt: Any, tool_image: str, tmp_path: Path) -> None:
    toml = f'image = "{tool_image}"\nsetup = ["only-in-image > made.txt; echo $GREETING >> made.txt"]\n'
    repo = make_repo(tmp_path, "proj", {".nightshift.toml": toml})
    rt.repos.add(RepoCreate(url=str(repo)))
    [result] = await build_images(rt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    made = Path(result.image.location) / "root" / "workspace" / "made.txt"
    assert made.read_text() == "from-image\nhi\n"
    record = rt.image_registry.get(result.image.id)
    assert record.environment_digest and record.environment_digest.startswith("sha256:")
    assert rt.image_registry.environment_digests() == {
        record.environment_digest
    }  # kept by collection
    log = rt.images.get(result.image.id).log
    assert f"environment: image {tool_image}" in log
    assert f"environment digest: {record.environment_digest}" in log
    # A session sandbox from the image runs on the image too.
    spec = rt.images.specs()[0]
    image = rt.provider.starter.usable_image(spec)
    sandbox = await rt.backend.start(
        SandboxSpec(image.ref(), limits=Limits(exec_timeout_s=60, disk_mb=DISK_MB))
    )
    try:
        found = await sandbox.exec(["sh", "-c", "cat made.txt; only-in-image; ls /usr/local"])
        assert found.stdout == "from-image\nhi\nfrom-image\n"
        assert "No such file" in found.stderr
    finally:
        await sandbox.terminate()


async def test_unchanged_digest_is_skipped_and_a_moved_tag_rebuilt(
    rt: Any,
    registry: FakeRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = push_image(
        registry,
        tmp_path / "v1",
        "team/moving:1",
        {"/usr/bin/tool": "#!/bin/sh\necho v1\n", "/bin/bash": BASH},
    )
    repo = make_repo(
        tmp_path, "proj", {".nightshift.toml": f'image = "{ref}"\nsetup = ["tool > v.txt"]\n'}
    )
    rt.repos.add(RepoCreate(url=str(repo)))
    [first] = await build_images(rt.image_jobs, ["proj"])
    assert first.outcome == "built", first.message
    calls = _calls(monkeypatch)
    [again] = await build_images(rt.image_jobs, ["proj"])
    assert again.outcome == "skipped", again.message
    assert any("inspect" in argv for argv in calls)
    assert not any("copy" in argv for argv in calls if "skopeo" in argv[0])
    assert not any("umoci" in argv[0] for argv in calls)
    push_image(
        registry,
        tmp_path / "v2",
        "team/moving:1",
        {"/usr/bin/tool": "#!/bin/sh\necho v2\n", "/bin/bash": BASH},
    )
    [moved] = await build_images(rt.image_jobs, ["proj"])  # the scheduled job's build
    assert moved.outcome == "built", moved.message
    assert rt.image_registry.get(moved.image.id).trigger == "schedule"
    ws = Path(moved.image.location) / "root" / "workspace"
    assert (ws / "v.txt").read_text() == "v2\n"
    assert (
        rt.image_registry.get(moved.image.id).environment_digest
        != rt.image_registry.get(first.image.id).environment_digest
    )


async def test_devcontainer_image_is_used(rt: Any, tool_image: str, tmp_path: Path) -> None:
    dev = {"image": tool_image, "postCreateCommand": "only-in-image > dev.txt"}
    repo = make_repo(tmp_path, "proj", {".devcontainer/devcontainer.json": json.dumps(dev)})
    rt.repos.add(RepoCreate(url=str(repo)))
    [result] = await build_images(rt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    ws = Path(result.image.location) / "root" / "workspace"
    assert (ws / "dev.txt").read_text() == "from-image\n"
    recorded = rt.image_registry.get(result.image.id).file_spec
    origins = {f: o for f, _v, o in effective_origins(rt.images.specs()[0], recorded)}
    assert origins["environment"] == ".devcontainer/devcontainer.json"


async def test_missing_image_fails_in_one_line_and_keeps_the_image(
    rt: Any, registry: FakeRegistry, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo)))
    [good] = await build_images(rt.image_jobs)
    commit(repo, {".nightshift.toml": f'image = "{registry.host}/team/absent:1"\n'})
    [bad] = await build_images(rt.image_jobs)
    assert bad.outcome == "failed"
    assert bad.message.startswith(f"image {registry.host}/team/absent:1: ")
    assert "\n" not in bad.message
    assert rt.image_registry.newest("proj").id == good.image.id


@pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed")
async def test_dockerfile_is_built_without_network(
    rt: Any, tool_image: str, tmp_path: Path
) -> None:
    dockerfile = (
        f"FROM {tool_image}\nRUN echo built > /usr/bin/built-marker\nENV EXTRA=from-dockerfile\n"
    )
    toml = 'dockerfile = "env/Dockerfile"\ncontext = "env"\nsetup = ["cat /usr/bin/built-marker > m.txt; echo $EXTRA >> m.txt"]\n'
    repo = make_repo(tmp_path, "proj", {"env/Dockerfile": dockerfile, ".nightshift.toml": toml})
    rt.repos.add(RepoCreate(url=str(repo)))
    [result] = await build_images(rt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    ws = Path(result.image.location) / "root" / "workspace"
    assert (ws / "m.txt").read_text() == "built\nfrom-dockerfile\n"
    commit(repo, {"env/Dockerfile": f"FROM {tool_image}\nRUN exit 3\n"})
    [bad] = await build_images(rt.image_jobs, ["proj"])
    assert bad.outcome == "failed"
    assert "RUN exit 3" in bad.message and "\n" not in bad.message
    assert rt.image_registry.newest("proj").id == result.image.id
