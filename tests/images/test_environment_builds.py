"""Builds of repositories that declare an environment or carry a devcontainer.json, and the
warning for a `.nightshift.toml` that is not committed, on real bubblewrap and real git."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.schemas import RepoCreate
from images.image_jobs import build_images
from tests.factories import make_repo
from tests.images.conftest import commit

DEVCONTAINER = """// set up like the team's editors
{
  "name": "proj",
  "containerEnv": {"GREETING": "from-devcontainer", },
  "postCreateCommand": "echo \\"$GREETING\\" > made-by-devcontainer.txt",
  "customizations": {"vscode": {}},
}
"""


async def test_devcontainer_env_and_post_create_run_as_set_up(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj", {".devcontainer/devcontainer.json": DEVCONTAINER})
    rt.repos.add(RepoCreate(url=str(repo), setup=["cat made-by-devcontainer.txt > after.txt"]))
    [result] = await build_images(rt.image_jobs, ["proj"])
    assert result.outcome == "built", result.message
    ws = Path(result.image.location) / "root" / "workspace"
    assert (ws / "after.txt").read_text() == "from-devcontainer\n"
    assert "environment: host" in rt.images.get(result.image.id).log
    # The recorded files complete the spec the same way, so the image is usable and the
    # unchanged tip is skipped.
    spec = rt.images.specs()[0]
    assert rt.provider.starter.usable_image(spec).id == result.image.id
    [again] = await build_images(rt.image_jobs, ["proj"])
    assert again.outcome == "skipped", again.message


async def test_bad_devcontainer_fails_in_one_line_and_keeps_the_image(
    rt: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo)))
    [good] = await build_images(rt.image_jobs)
    assert good.outcome == "built"
    features = {"name": "proj", "features": {"ghcr.io/devcontainers/features/node:1": {}}}
    commit(repo, {".devcontainer/devcontainer.json": json.dumps(features, indent=2)})
    [bad] = await build_images(rt.image_jobs)
    assert bad.outcome == "failed"
    assert bad.message.startswith(".devcontainer/devcontainer.json line 3: features are not")
    assert "\n" not in bad.message
    assert rt.image_registry.newest("proj").id == good.image.id
    commit(repo, {".devcontainer/devcontainer.json": '{\n  "image": "debian"\n  "x": 1\n}'})
    [broken] = await build_images(rt.image_jobs)
    assert broken.message.startswith(".devcontainer/devcontainer.json line 3: not valid JSON")
    assert rt.image_registry.newest("proj").id == good.image.id


async def test_devcontainer_features_are_refused_in_one_line_even_with_an_image(
    rt: Any, tmp_path: Path
) -> None:
    dev = {
        "image": "mcr.microsoft.com/devcontainers/python:3",
        "features": {"ghcr.io/devcontainers/features/node:1": {}},
    }
    text = json.dumps(dev, indent=2)
    repo = make_repo(tmp_path, "proj", {".devcontainer/devcontainer.json": text})
    rt.repos.add(RepoCreate(url=str(repo)))
    [result] = await build_images(rt.image_jobs)
    assert result.outcome == "failed"
    assert result.message.startswith(".devcontainer/devcontainer.json line 3: features are not")
    assert "\n" not in result.message


async def test_unreachable_registry_fails_in_one_line_and_keeps_the_image(
    rt: Any, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "proj")
    rt.repos.add(RepoCreate(url=str(repo)))
    [good] = await build_images(rt.image_jobs)
    commit(repo, {".nightshift.toml": 'image = "127.0.0.1:9/dev/tools:1"\n'})
    [bad] = await build_images(rt.image_jobs)
    assert bad.outcome == "failed"
    assert bad.message.startswith("image 127.0.0.1:9/dev/tools:1: ")
    assert "\n" not in bad.message
    # skopeo's log framing (`time=… level=fatal msg="…"`) is reduced to its message.
    assert "level=" not in bad.message and "connection refused" in bad.message, bad.message
    assert rt.image_registry.newest("proj").id == good.image.id


async def test_uncommitted_spec_file_is_named_in_the_build_log(rt: Any, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj")
    (repo / ".nightshift.toml").write_text('setup = ["npm ci"]\n')
    rt.repos.add(RepoCreate(url=str(repo)))
    [result] = await build_images(rt.image_jobs)
    assert result.outcome == "built", result.message
    log = rt.images.get(result.image.id).log
    assert f"warning: {repo / '.nightshift.toml'} is not committed on branch 'main'" in log
    commit(repo, {})
    [committed] = await build_images(rt.image_jobs)
    assert "is not committed" not in rt.images.get(committed.image.id).log


async def test_a_repo_may_opt_out_of_its_devcontainer(rt: Any, tmp_path: Path) -> None:
    """A devcontainer.json naming an image this server cannot pull (and features it cannot
    build): `devcontainer = false` in `.nightshift.toml`, or stored at `repos add`, runs the
    repository on the host's tools without reading the file at all."""
    dev = {
        "image": "127.0.0.1:9/devcontainers/python:3",
        "features": {"ghcr.io/devcontainers/features/node:1": {}},
    }
    files = {".devcontainer/devcontainer.json": json.dumps(dev, indent=2)}
    repo = make_repo(tmp_path, "proj", files)
    rt.repos.add(RepoCreate(url=str(repo)))
    [refused] = await build_images(rt.image_jobs, ["proj"])
    assert refused.outcome == "failed", refused.message
    commit(repo, {".nightshift.toml": "devcontainer = false\n"})
    [built] = await build_images(rt.image_jobs, ["proj"])
    assert built.outcome == "built", built.message
    assert "environment: host" in rt.images.get(built.image.id).log
    # Stored instead, for a repository whose files the team cannot change.
    other = make_repo(tmp_path, "other", files)
    rt.repos.add(RepoCreate(url=str(other), devcontainer=False))
    [stored] = await build_images(rt.image_jobs, ["other"])
    assert stored.outcome == "built", stored.message
    assert rt.repos.get("other").devcontainer is False


def test_devcontainer_in_the_spec_file_must_be_a_boolean() -> None:
    from images.spec import SpecFileError
    from images.spec_file import parse_spec_file

    assert parse_spec_file("devcontainer = false\n").use_devcontainer is False
    try:
        parse_spec_file('setup = []\ndevcontainer = "no"\n')
    except SpecFileError as exc:
        assert exc.line == 2 and "true or false" in str(exc)
    else:
        raise AssertionError("a string was taken for devcontainer")
