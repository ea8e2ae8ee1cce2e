"""Changing a registered repo (`PATCH /api/repos/{repo}`, `nightshift repos set`): the fields
named change and nothing else, bad input changes nothing, the image is built again and new
sessions run on it, and another process's lookups take the change."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_images_api import settings
from tests.factories import ApiClient, git, make_repo, nightshift, wait_for
from tests.fakes.llm import ScriptBook, Turn

__all__ = ["settings"]  # fixture: periodic builds off, no warm pool refills

pytestmark = pytest.mark.slow


def _image(api: ApiClient, repo: str, trigger: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        images = api.http.get("/api/images", params={"repo": repo}).json()
        done = [i for i in images if i["trigger"] == trigger and i["status"] != "building"]
        return done[0] if done else None

    image = wait_for(found, 60, f"the {trigger!r} image of {repo}")
    assert image["status"] == "ready", image
    return image


def read_deps(api: ApiClient, openai_fake: ScriptBook, repo: str, says: str) -> list[Any]:
    """A new session on `repo` reads the `deps.txt` its set-up wrote, which says `says`; its
    events."""
    openai_fake.script(
        "read the deps",
        Turn.tool("read_file", path="deps.txt"),
        Turn.tool("finish", summary="read it"),
    )
    session = api.create(repo, "read the deps")
    assert api.wait_status(session["id"], "finished", "failed")["status"] == "finished"
    events = api.events(session["id"])
    read = next(e for e in events if e["type"] == "tool_result" and e["name"] == "read_file")
    assert says in str(read["output"])
    return events


def test_a_changed_setup_builds_the_image_again_and_new_sessions_run_on_it(
    api: ApiClient, openai_fake: ScriptBook, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"), setup=["echo one > deps.txt"], description="old")
    first = _image(api, "proj", "added")
    r = api.http.patch(
        "/api/repos/proj",
        json={"setup": ["echo two > deps.txt"], "egress": ["pypi.org"], "pool_size": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["setup"] == ["echo two > deps.txt"] and body["egress"] == ["pypi.org"]
    assert body["description"] == "old" and body["base"] == "main"  # the rest is kept
    second = _image(api, "proj", "changed")
    assert second["spec_hash"] != first["spec_hash"]
    shown = api.http.get("/api/repos/proj").json()
    effective = {i["field"]: i["value"] for i in shown["effective"]}
    assert effective["setup"] == ["echo two > deps.txt"]
    events = read_deps(api, openai_fake, "proj", says="two")
    assert next(e for e in events if e["type"] == "sandbox_ready")["image"] == second["id"]


def test_bad_changes_are_refused_with_a_message_and_change_nothing(
    api: ApiClient, tmp_path: Path
) -> None:
    api.add_repo(make_repo(tmp_path, "proj"), setup=["make deps"], image="python:3.12-slim")
    before = api.http.get("/api/repos").json()
    refused = {
        "nothing named": {},
        "its name": {"name": "other"},
        "its url": {"url": "/etc"},
        "a null base": {"base": None},
        "an empty base": {"base": ""},
        "too big a pool": {"pool_size": 99},
        "a bad image reference": {"image": "not an image!"},
        "a Dockerfile outside": {"dockerfile": "../../etc/Dockerfile"},
        "both environments": {"image": "python:3.12", "dockerfile": "Dockerfile"},
        "a list for a text": {"description": ["x"]},
    }
    for why, body in refused.items():
        r = api.http.patch("/api/repos/proj", json=body)
        assert 400 <= r.status_code < 500, (why, r.status_code, r.text)
        assert r.json()["detail"], why
    missing = api.http.patch("/api/repos/nope", json={"description": "x"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert api.http.get("/api/repos").json() == before
    # Naming a Dockerfile replaces the stored image (and the other way round).
    r = api.http.patch("/api/repos/proj", json={"dockerfile": "Dockerfile"})
    assert r.status_code == 200, r.text
    assert r.json()["image"] is None and r.json()["dockerfile"] == "Dockerfile"
    r = api.http.patch("/api/repos/proj", json={"image": None, "dockerfile": None})
    assert (r.json()["image"], r.json()["dockerfile"]) == (None, None)


def test_another_process_takes_the_change_within_its_refresh(runtime: Any, tmp_path: Path) -> None:
    """Another process's catalog (it answers every session's lookups from memory) reads the
    row again once its entry is `refresh_s` old; the changing process sees it at once. A
    base branch the repository does not have is refused."""
    from app.db import control_engine
    from app.errors import Invalid
    from app.schemas import RepoCreate, RepoUpdate
    from app.services.repo_catalog import RepoCatalog

    path = make_repo(tmp_path, "proj")
    repo = runtime.repos.add(RepoCreate(url=str(path), setup=["a"]))
    with pytest.raises(Invalid, match="trunk"):
        runtime.repos.update("proj", RepoUpdate(base="trunk"))
    git(path, "branch", "trunk")
    other_engine = control_engine(runtime.settings.control_db_url)
    try:
        other = RepoCatalog(other_engine, refresh_s=0.2)
        assert other.spec_by_id(repo.id).setup == ["a"]
        runtime.repos.update("proj", RepoUpdate(setup=["b"], base="trunk"))
        assert runtime.repos.spec_by_id(repo.id).setup == ["b"]
        assert runtime.images.repos.get("proj").base == "trunk"  # the images' catalog too
        wait_for(lambda: other.spec_by_id(repo.id).setup == ["b"], 5, "the other process")
        assert other.get("proj").base == "trunk"
    finally:
        other_engine.dispose()


def test_the_operator_changes_a_repo_with_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    repo = make_repo(tmp_path / "anywhere", "proj")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return nightshift(*args, data=data)

    assert cli("repos", "add", str(repo), "--setup", "make").returncode == 0
    changed = cli(
        "repos", "set", "proj", "--setup", "", "--env", "A=1", "--egress", "pypi.org",
        "--image", "python:3.12-slim",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert "changed proj: egress, env, image, setup" in changed.stdout
    listed = cli("repos", "list", "--json")
    (row,) = json.loads(listed.stdout)
    assert (row["setup"], row["env"], row["egress"]) == ([], {"A": "1"}, ["pypi.org"])
    assert row["image"] == "python:3.12-slim"
    for args, says in (
        (("repos", "set", "proj"), "nothing to change"),
        (("repos", "set", "proj", "--env", "A"), "KEY=VALUE"),
        (("repos", "set", "nope", "--base", "x"), "unknown repo 'nope'"),
        (("repos", "set", "proj", "--pool-size", "99"), "pool_size"),
    ):
        refused = cli(*args)
        assert refused.returncode != 0 and says in refused.stderr, (args, refused.stderr)
    assert json.loads(cli("repos", "list", "--json").stdout) == [row]
