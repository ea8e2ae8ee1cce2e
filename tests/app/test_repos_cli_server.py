"""`nightshift repos add|set|remove|show|list --server URL`: the CLI registers, changes and
removes repos on a server through its API (a change rebuilds the image at once there), prints
what the data-dir commands print, and turns a refusal into one error line; without `--server`
it stays on this machine's data dir even when NIGHTSHIFT_SERVER is set, and says so.

The server is a real one in a thread on 127.0.0.1; the CLI runs as a user runs it, a
subprocess with its own config dir (the token `nightshift login` kept) and its own data dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.app.test_images_api import settings
from tests.app.test_repo_changes import _image
from tests.cluster import free_port
from tests.factories import ApiClient, make_repo
from tests.fakes.server import BackgroundServer

__all__ = ["settings"]  # fixture: periodic builds off, so a build is the change's own

pytestmark = pytest.mark.slow


class Laptop:
    """The CLI on another machine: its own data dir and config dir, nothing else of ours."""

    def __init__(self, root: Path, **env: str) -> None:
        self.data = root / "laptop-data"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        self.env.update(
            NIGHTSHIFT_DATA_DIR=str(self.data),
            XDG_CONFIG_HOME=str(root / "laptop-config"),
            COLUMNS="200",
            NO_COLOR="1",
            **env,
        )

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).with_name("nightshift")), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def said(self, *args: str, stdin: str = "") -> str:
        """What a command printed, as one line (the terminal's wrapping undone)."""
        return " ".join(self.ok(*args, stdin=stdin).split())

    def refused(self, *args: str, says: str) -> None:
        """One `error:` line with the server's words, exit 1."""
        done = self.run(*args)
        assert done.returncode == 1, (args, done.returncode, done.stdout, done.stderr)
        assert "error:" in done.stderr and says in done.stderr, (args, done.stderr)


@pytest.fixture
def laptop(server: BackgroundServer, api: ApiClient, tmp_path: Path) -> Laptop:
    """Logged in to the server as the `api` fixture's person."""
    user = Laptop(tmp_path)
    user.ok("login", "--server", server.url, "--token", api.person.token)
    return user


def _on_server(api: ApiClient, removed: bool = False) -> list[dict[str, Any]]:
    r = api.http.get("/api/repos", params={"removed": "true"} if removed else {})
    assert r.status_code == 200, r.text
    return list(r.json())


def _triggers(api: ApiClient, repo: str) -> list[str]:
    return [i["trigger"] for i in api.http.get("/api/images", params={"repo": repo}).json()]


def test_add_set_show_list_and_remove_go_to_the_named_server(
    server: BackgroundServer, api: ApiClient, laptop: Laptop, tmp_path: Path
) -> None:
    url = server.url
    path = make_repo(tmp_path, "proj").resolve()  # on the server's machine, in its roots
    (path / ".nightshift.toml").write_text('setup = ["echo uncommitted"]\n')  # not on main
    added = laptop.said(
        "repos", "add", str(path), "--server", url, "--setup", "echo one > deps.txt",
        "--description", "the project",
    )  # fmt: skip
    assert f"added proj (local: {path}, base main) on {url}" in added
    # The server looked at the working tree on its machine, as the data-dir command does.
    assert f"warning: {path / '.nightshift.toml'} is not committed on branch 'main'" in added
    (row,) = _on_server(api)
    assert (row["name"], row["setup"], row["description"]) == (
        "proj",
        ["echo one > deps.txt"],
        "the project",
    )
    first = _image(api, "proj", "added")
    # Nothing was registered on this machine's data dir.
    assert json.loads(laptop.ok("repos", "list", "--json")) == []

    changed = laptop.said(
        "repos", "set", "proj", "--server", url, "--setup", "echo two > deps.txt",
        "--egress", "pypi.org",
    )  # fmt: skip
    assert f"changed proj: egress, setup; {url} builds its image again now" in changed
    (row,) = _on_server(api)
    assert row["setup"] == ["echo two > deps.txt"] and row["egress"] == ["pypi.org"]
    assert row["description"] == "the project"  # the rest is kept
    second = _image(api, "proj", "changed")  # periodic builds are off: the change built it
    assert second["spec_hash"] != first["spec_hash"]

    shown = laptop.ok("repos", "show", "proj", "--server", url)
    assert f"proj (local: {path}, base main)" in shown and "effective spec as of" in shown
    assert "echo two > deps.txt" in shown and "environment: host" in shown
    detail = json.loads(laptop.ok("repos", "show", "proj", "--json", "--server", url))
    assert detail == api.http.get("/api/repos/proj").json()

    assert json.loads(laptop.ok("repos", "list", "--json", "--server", url)) == _on_server(api)
    table = laptop.ok("repos", "list", "--server", url)
    assert "environment" in table and "proj" in table and "host" in table

    # Removing asks first, as on the data dir; "no" leaves it on the server.
    answered_no = laptop.run("repos", "remove", "proj", "--server", url, stdin="n\n")
    assert answered_no.returncode != 0 and "Remove proj" in answered_no.stdout
    assert [r["name"] for r in _on_server(api)] == ["proj"]
    removed = laptop.said("repos", "remove", "proj", "--server", url, stdin="y\n")
    assert "removed proj" in removed
    assert f"nightshift repos add {path} --name proj --server {url}" in removed
    assert _on_server(api) == []
    (gone,) = json.loads(laptop.ok("repos", "list", "--removed", "--json", "--server", url))
    assert gone["name"] == "proj" and gone["removed_at"] is not None
    assert "removed on" in laptop.ok("repos", "show", "proj", "--server", url)
    assert json.loads(laptop.ok("repos", "list", "--removed", "--json")) == []


def test_a_refusal_is_an_error_line_and_changes_nothing_on_the_server(
    server: BackgroundServer, api: ApiClient, laptop: Laptop, tmp_path: Path
) -> None:
    url = server.url
    api.add_repo(make_repo(tmp_path, "proj"), description="kept")
    _image(api, "proj", "added")
    before = _on_server(api, removed=True)
    other = make_repo(tmp_path / "elsewhere", "other")
    laptop.refused(
        "repos",
        "add",
        str(other),
        "--name",
        "proj",
        "--server",
        url,
        says="a repo named 'proj' already exists",
    )
    laptop.refused("repos", "set", "proj", "--base", "trunk", "--server", url, says="trunk")
    laptop.refused("repos", "set", "nope", "--base", "main", "--server", url, says="'nope'")
    laptop.refused("repos", "remove", "nope", "--yes", "--server", url, says="unknown repo 'nope'")
    laptop.refused("repos", "show", "nope", "--server", url, says="unknown repo 'nope'")
    assert _on_server(api, removed=True) == before
    assert "changed" not in _triggers(api, "proj")  # a refused change builds nothing

    # A removed repo is refused by the server's DELETE, before any question.
    assert api.http.delete("/api/repos/proj").status_code == 200
    laptop.refused("repos", "remove", "proj", "--server", url, says="repo 'proj' was removed on")

    # No token kept for the server: its 401, with how to log in.
    stranger = Laptop(tmp_path / "stranger")
    done = stranger.run("repos", "list", "--server", url)
    assert done.returncode == 1 and "nightshift login" in done.stderr, done.stderr


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    laptop = Laptop(tmp_path)
    nowhere = f"http://127.0.0.1:{free_port()}"
    path = make_repo(tmp_path, "proj")
    for args in (
        ("repos", "add", str(path)),
        ("repos", "set", "proj", "--base", "main"),
        ("repos", "remove", "proj", "--yes"),
        ("repos", "show", "proj"),
        ("repos", "list"),
    ):
        laptop.refused(
            *args, "--server", nowhere, says=f"no Nightshift server answers at {nowhere}"
        )
    assert json.loads(laptop.ok("repos", "list", "--removed", "--json")) == []


def test_without_server_the_commands_stay_on_the_data_dir_and_say_how_to_reach_it(
    server: BackgroundServer, api: ApiClient, tmp_path: Path
) -> None:
    """NIGHTSHIFT_SERVER alone does not move them: scripts written for the host keep working."""
    laptop = Laptop(tmp_path, NIGHTSHIFT_SERVER=server.url)
    hint = 'pass --server "$NIGHTSHIFT_SERVER"'
    path = make_repo(tmp_path, "proj")
    added = laptop.said("repos", "add", str(path))
    assert f"in the data dir {laptop.data.resolve()}" in added
    assert f"NIGHTSHIFT_SERVER is set ({server.url})" in added and hint in added
    changed = laptop.said("repos", "set", "proj", "--description", "here")
    assert "changed proj: description; a server on this data dir" in changed and hint in changed
    (row,) = json.loads(laptop.ok("repos", "list", "--json"))
    assert (row["name"], row["description"]) == ("proj", "here")
    removed = laptop.said("repos", "remove", "proj", "--yes")
    assert "removed proj" in removed and hint in removed
    assert f"nightshift repos add {path.resolve()} --name proj` brings it back" in removed
    assert json.loads(laptop.ok("repos", "list", "--json")) == []
    assert _on_server(api, removed=True) == []  # the server never heard of it
