"""A cold start (no image yet) of a repository that declares its environment, on a local
backend: the declared image is pulled in the session's start path, bounded by the same size
cap and failing with the same one-line errors as a build; and an image's size is recorded."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.schemas import RepoCreate
from images.image_jobs import build_images
from images.layers import tree_size
from images.setup import BuildError
from tests.factories import make_repo
from tests.fakes.registry import FakeRegistry, missing_tool, push_image
from tests.images.oci_fixtures import BASH, registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool()))


async def test_a_cold_start_runs_on_the_declared_image(
    rt: Any, tool_image: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {".nightshift.toml": f'image = "{tool_image}"\n'})
    rt.repos.add(RepoCreate(url=str(repo)))
    spec = rt.images.specs()[0]
    acquired = await rt.provider.acquire(spec, label="t")
    try:
        assert acquired.mode == "cold"
        assert acquired.spec is not None and acquired.spec.image == tool_image
        found = await acquired.sandbox.exec(["sh", "-c", "only-in-image; echo $GREETING"])
        assert found.stdout == "from-image\nhi\n", found.stderr
    finally:
        await acquired.sandbox.terminate()
    await rt.provider.wait_background()
    built = rt.image_registry.newest("proj")
    assert built is not None and built.trigger == "session" and built.status == "ready"
    assert built.environment_digest is not None


async def test_a_cold_start_over_the_size_cap_is_refused_in_one_line(
    make_settings: Any, registry: FakeRegistry, tmp_path: Path
) -> None:
    from app.runtime import build_runtime

    big = push_image(
        registry,
        tmp_path / "big",
        "team/big:1",
        {"/usr/share/blob": secrets.token_hex(1_500_000), "/bin/bash": BASH},
    )
    rt = build_runtime(make_settings(image_interval=0, image_max_mb=1))
    try:
        repo = make_repo(tmp_path, "proj")
        rt.repos.add(RepoCreate(url=str(repo), image=big))
        spec = rt.images.specs()[0]
        with pytest.raises(BuildError) as refused:
            await rt.provider.acquire(spec, label="t")
        message = str(refused.value)
        assert "over NIGHTSHIFT_IMAGE_MAX_MB=1" in message and "\n" not in message
        assert rt.image_registry.newest("proj") is None  # no cold record is left behind
        rootfs = Path(rt.settings.data_dir) / "rootfs"
        assert not rootfs.exists() or not [p for p in rootfs.iterdir() if p.name[0] != "."]
        assert rt.backend.live == {}  # nothing was started
    finally:
        rt.close()


async def test_an_image_records_its_size_and_the_shared_roots(
    rt: Any, tool_image: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj", {".nightshift.toml": f'image = "{tool_image}"\n'})
    host = make_repo(tmp_path, "plain")
    rt.repos.add(RepoCreate(url=str(repo)))
    rt.repos.add(RepoCreate(url=str(host)))
    results = await build_images(rt.image_jobs, ["proj", "plain"])
    assert [r.outcome for r in results] == ["built", "built"], [r.message for r in results]
    declared, plain = (rt.images.get(r.image.id) for r in results)
    record = rt.image_registry.get(declared.id)
    rootfs = Path(rt.builder.oci.present(record.environment_digest).rootfs)
    assert declared.environment_digest == record.environment_digest
    assert declared.size_bytes == tree_size(Path(record.location)) > 0
    assert declared.environment_size_bytes == tree_size(rootfs) > 0
    assert plain.size_bytes is not None and plain.size_bytes > 0
    assert (
        "ready in " in declared.log
        and f", {declared.size_bytes / 1e6:.1f} MB on disk" in declared.log
    )
    assert plain.environment_digest is None and plain.environment_size_bytes is None
    env = {"NIGHTSHIFT_DATA_DIR": str(rt.settings.data_dir), "COLUMNS": "300"}
    listed = CliRunner().invoke(app, ["images", "list", "--repo", "proj"], env=env)
    assert listed.exit_code == 0, listed.output
    [row] = [line for line in listed.output.splitlines() if declared.id in line]
    assert f"image {tool_image} @ {record.environment_digest[:19]}" in row
    assert f"{declared.size_bytes / 1e6:.1f} MB + " in row and " MB shared" in row
    # The repo says which environment it uses, with the digest its image runs on.
    detail = rt.images.repo_detail("proj")
    assert detail.environment == f"image {tool_image}"
    assert detail.environment_digest == record.environment_digest
    assert rt.images.repo_detail("plain").environment_digest is None
    shown = CliRunner().invoke(app, ["repos", "show", "proj"], env=env)
    assert f"environment: image {tool_image} ({record.environment_digest})" in shown.output
    repos = CliRunner().invoke(app, ["repos", "list"], env=env)
    rows = {line.split()[1]: line for line in repos.output.splitlines() if "│" in line[:3]}
    assert f"image {tool_image}" in rows["proj"] and "host" in rows["plain"], repos.output
