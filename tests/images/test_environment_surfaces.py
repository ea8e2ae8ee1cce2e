"""Where a user sees a repo's environment: the API's effective spec with the origin of each
value, `nightshift repos add|show`, and image listings with their environment and step times."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.factories import ApiClient, make_repo, wait_for
from tests.images.conftest import commit

pytestmark = pytest.mark.slow

DEVCONTAINER = '{"containerEnv": {"FROM_DEV": "1"}, "postCreateCommand": "echo dev > dev.txt"}'


def _effective(detail: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    return {f["field"]: (f["value"], f["origin"]) for f in detail["effective"]}


def test_api_shows_the_effective_spec_and_declared_images(api: ApiClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj", {".devcontainer/devcontainer.json": DEVCONTAINER})
    commit(repo, {".nightshift.toml": 'setup = ["echo file > file.txt"]\n[env]\nA = "file"\n'})
    api.add_repo(repo, egress=["pypi.org"], env={"A": "stored", "B": "stored"})
    before = api.http.get("/api/repos/proj").json()
    assert before["environment"] == "host"

    def built() -> dict[str, Any] | None:
        detail = api.http.get("/api/repos/proj").json()
        return detail if detail["effective_at"] else None

    detail = wait_for(built, 60, "the first build of proj")
    fields = _effective(detail)
    assert fields["setup"] == (
        ["echo dev > dev.txt", "echo file > file.txt"],
        ".devcontainer/devcontainer.json + .nightshift.toml",
    )
    assert fields["egress"] == (["pypi.org"], "stored")
    assert fields["env.A"] == ("file", ".nightshift.toml")
    assert fields["env.B"] == ("stored", "stored")
    assert fields["env.FROM_DEV"] == ("1", ".devcontainer/devcontainer.json")
    assert fields["environment"] == ("host", "host")
    [image] = api.http.get("/api/images", params={"repo": "proj"}).json()
    assert image["environment"] == "host"
    assert [(s["command"], s["exit_code"]) for s in image["steps"]] == [
        ("echo dev > dev.txt", 0),
        ("echo file > file.txt", 0),
    ]
    assert all(s["ms"] >= 0 for s in image["steps"])
    assert image["size_bytes"] > 0 and image["environment_digest"] is None
    assert image["environment_size_bytes"] is None  # the host's tools are not part of it

    other = make_repo(tmp_path, "other")
    added = api.add_repo(other, image="127.0.0.1:5000/dev/tools:1")
    assert added["image"] == "127.0.0.1:5000/dev/tools:1" and added["warnings"] == []
    third = make_repo(tmp_path, "third")
    (third / ".nightshift.toml").write_text('setup = ["npm ci"]\n')  # not committed
    # Whoever can write the shared path controls its git config: reading the repo for the
    # warning runs none of it (no index refresh, hook, pager or monitor).
    marker = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    for key in ("core.fsmonitor", "core.pager", "core.sshCommand"):
        subprocess.run(["git", "-C", str(third), "config", key, str(hook)], check=True)
    [warning] = api.add_repo(third)["warnings"]
    assert f"{third / '.nightshift.toml'} is not committed on branch 'main'" in warning
    assert not marker.exists()
    shown = api.http.get("/api/repos/other").json()
    assert _effective(shown)["image"] == ("127.0.0.1:5000/dev/tools:1", "stored")
    # The list carries each repo's environment, as its detail says (no request per repo).
    listed = {r["name"]: r["environment"] for r in api.http.get("/api/repos").json()}
    assert listed == {"other": "image 127.0.0.1:5000/dev/tools:1", "proj": "host", "third": "host"}
    assert listed["other"] == shown["environment"]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"image": "Not A Ref"}, "whitespace"),
        ({"image": "debian", "dockerfile": "Dockerfile"}, "exclusive"),
        ({"dockerfile": "../outside/Dockerfile"}, "inside the repository"),
        ({"context": "."}, "needs dockerfile"),
    ],
)
def test_api_refuses_bad_environments_and_adds_nothing(
    api: ApiClient, tmp_path: Path, extra: dict[str, str], reason: str
) -> None:
    repo = make_repo(tmp_path, "proj")
    r = api.http.post("/api/repos", json={"url": str(repo), **extra})
    assert r.status_code == 422 and reason in r.text
    assert api.http.get("/api/repos").json() == []


def test_cli_add_warns_of_an_uncommitted_spec_file_and_shows_the_repo(tmp_path: Path) -> None:
    runner, env = CliRunner(), {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "ns"), "COLUMNS": "200"}
    repo = make_repo(tmp_path, "proj")
    (repo / ".nightshift.toml").write_text('setup = ["npm ci"]\n')
    added = runner.invoke(app, ["repos", "add", str(repo), "--image", "debian:12"], env=env)
    assert added.exit_code == 0, added.output
    assert ".nightshift.toml is not committed on branch 'main'" in added.output
    other = make_repo(tmp_path, "plain")
    (other / ".nightshift.toml").write_text('setup = ["npm ci"]\n')
    assert runner.invoke(app, ["repos", "add", str(other)], env=env).exit_code == 0
    built = runner.invoke(app, ["images", "build", "plain"], env=env)
    assert built.exit_code == 0, built.output
    assert "✓ plain: built" in built.output
    assert f"{other / '.nightshift.toml'} is not committed on branch 'main'" in built.output
    listed = runner.invoke(app, ["images", "list", "--repo", "plain"], env=env)
    assert listed.exit_code == 0, listed.output
    [row] = [line for line in listed.output.splitlines() if "plain" in line]
    assert "host" in row and " MB" in row and "ready" in row
    [image] = json.loads(runner.invoke(app, ["images", "list", "--json"], env=env).stdout)
    assert image["size_bytes"] > 0 and image["environment"] == "host"
    table = runner.invoke(app, ["repos", "list"], env=env)
    assert table.exit_code == 0, table.output
    [proj_row] = [line for line in table.output.splitlines() if "proj" in line]
    assert "image debian:12" in proj_row
    shown = runner.invoke(app, ["repos", "show", "proj"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "environment: image debian:12" in shown.output
    assert "not built yet" in shown.output
    as_json = json.loads(runner.invoke(app, ["repos", "show", "proj", "--json"], env=env).stdout)
    assert as_json["image"] == "debian:12" and as_json["effective_at"] is None
    bad = runner.invoke(app, ["repos", "add", str(repo), "--name", "x", "--image", "A B"], env=env)
    assert bad.exit_code != 0 and "whitespace" in bad.output
    unknown = runner.invoke(app, ["repos", "show", "nope"], env=env)
    assert unknown.exit_code != 0 and "unknown repo 'nope'" in unknown.output
