"""Who may register which repository: API callers only inside NIGHTSHIFT_REPO_ROOTS, the
operator anywhere on the host, nobody inside the data dir; and a refusal never tells whether a
path exists."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import Person, make_person, make_repo, nightshift
from tests.fakes.server import BackgroundServer

Started = tuple[httpx.Client, Any]


@pytest.fixture
def start(make_settings: Any) -> Iterator[Callable[..., Started]]:
    """Start Nightshift with these settings; the client carries a token in token mode."""
    from app.main import create_app
    from app.runtime import build_runtime

    opened: list[tuple[Any, BackgroundServer, httpx.Client]] = []

    def make(**overrides: Any) -> Started:
        runtime = build_runtime(make_settings(**overrides))
        runtime.start()
        server = BackgroundServer(create_app(runtime=runtime)).start()
        headers = {}
        if runtime.settings.auth == "token":
            person: Person = make_person(runtime, "mallory", "Mallory", "mallory@example.com")
            headers["Authorization"] = f"Bearer {person.token}"
        client = httpx.Client(base_url=server.url, headers=headers, timeout=30)
        opened.append((runtime, server, client))
        return client, runtime

    yield make
    for runtime, server, client in reversed(opened):
        client.close()
        server.stop()
        runtime.close()


def _add(http: httpx.Client, url: str) -> httpx.Response:
    return http.post("/api/repos", json={"url": url})


def test_token_mode_refuses_every_local_path_by_default_naming_the_setting(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    http, _ = start(repo_roots="")
    repo = make_repo(tmp_path, "someone-elses")
    existing, missing = _add(http, str(repo)), _add(http, str(tmp_path / "no-such-repo"))
    assert existing.status_code == 403
    assert "NIGHTSHIFT_REPO_ROOTS" in existing.json()["detail"]
    assert "nightshift repos add" in existing.json()["detail"]
    # The same answer whether the path exists or not: the API is no probe of the host.
    assert (missing.status_code, missing.json()) == (403, existing.json())
    assert _add(http, f"file://{repo}").json() == existing.json()
    assert http.get("/api/repos").json() == []


def test_api_registers_only_inside_the_roots_and_resolves_before_checking(
    start: Callable[..., Started], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = tmp_path / "shared", tmp_path / "private"
    inside_repo = make_repo(root, "team")
    secret = make_repo(outside, "secret")
    (root / "link").symlink_to(secret)  # a link inside a root that leads out of it
    monkeypatch.setenv("HOME", str(outside))
    monkeypatch.chdir(outside)
    http, runtime = start(repo_roots=f"{root},{tmp_path / 'elsewhere'}")
    refusal = _add(http, str(secret)).json()
    assert "only inside" in refusal["detail"] and str(root) in refusal["detail"]
    for url in (
        str(secret),
        str(outside / "does-not-exist"),
        str(root / "link"),
        f"{root}/../private/secret",
        f"file://{secret}",
        f"file://localhost{secret}",
        "~/secret",
        "secret",  # relative to the server's working directory
        "./secret",
        "~root",
        "~no-such-user-anywhere/x",
        str(runtime.settings.data_dir / "mirrors"),
    ):
        r = _add(http, url)
        assert (r.status_code, r.json()) == (403, refusal), url
    assert http.get("/api/repos").json() == []
    assert _add(http, f"file://{inside_repo}").status_code == 201
    assert [r["url"] for r in http.get("/api/repos").json()] == [str(inside_repo.resolve())]
    # Inside a root the usual messages come back: the operator shared that directory.
    assert "no such directory" in _add(http, str(root / "missing")).json()["detail"]


def test_the_data_dir_is_refused_even_inside_a_root(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    http, runtime = start(repo_roots=str(tmp_path))
    mirror = make_repo(runtime.settings.data_dir / "mirrors", "proj", bare=True)
    r = _add(http, str(mirror))
    assert r.status_code == 403 and "data directory" in r.json()["detail"]
    # The operator may not register it either.
    from app.errors import Forbidden
    from app.schemas import RepoCreate

    with pytest.raises(Forbidden, match="inside Nightshift's data directory"):
        runtime.repos.add(RepoCreate(url=str(mirror)))


def test_over_long_and_unusable_paths_are_4xx_with_a_message(
    start: Callable[..., Started], tmp_path: Path
) -> None:
    http, _ = start(repo_roots=str(tmp_path))
    for url in (str(tmp_path / ("a" * 300)), str(tmp_path / ("b" * 256) / "repo")):
        r = _add(http, url)
        assert r.status_code == 422 and r.json()["detail"].startswith(url), r.text
    for url in ("/" + "c" * 900, "ext::sh -c touch% /tmp/pwned", "http://example.com/x/y"):
        r = _add(http, url)
        assert 400 <= r.status_code < 500 and r.json()["detail"], r.text
    r = _add(http, f"{tmp_path}/nul\x00byte")
    assert r.status_code == 403, r.text


def test_make_run_local_mode_adds_a_repo_under_home_over_the_api(
    start: Callable[..., Started], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    repo = make_repo(home / "src", "myrepo")
    elsewhere = make_repo(tmp_path / "other", "notmine")
    monkeypatch.setenv("HOME", str(home))
    http, _ = start(auth="local", repo_roots="")  # what `make run` starts
    r = _add(http, "~/src/myrepo")
    assert r.status_code == 201, r.text
    assert r.json()["url"] == str(repo.resolve())
    refused = _add(http, str(elsewhere))
    assert refused.status_code == 403 and str(home) in refused.json()["detail"]


def test_repo_roots_are_os_pathsep_or_comma_separated(make_settings: Any, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    settings = make_settings(repo_roots=f"{a}{os.pathsep}{b}, {c}")
    assert settings.api_repo_roots() == (a, b, c)
    assert make_settings(repo_roots="").api_repo_roots() == ()


def test_operator_cli_adds_any_path_but_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    repo = make_repo(tmp_path / "anywhere", "proj")
    mirror = make_repo(data / "mirrors", "m", bare=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return nightshift(*args, data=data, cwd=tmp_path)

    added = cli("repos", "add", str(repo))
    assert added.returncode == 0 and "added proj" in added.stdout, added.stderr
    refused = cli("repos", "add", str(mirror))
    assert refused.returncode == 2 and "data directory" in refused.stderr
