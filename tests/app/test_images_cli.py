"""`nightshift images build|list|show` and `nightshift bench startup`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.factories import make_repo

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tmp_path: Path) -> tuple[CliRunner, dict[str, str]]:
    return CliRunner(), {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "ns")}


def test_build_list_and_show_images(cli: tuple[CliRunner, dict[str, str]], tmp_path: Path) -> None:
    runner, env = cli
    repo = make_repo(tmp_path, "proj")
    added = runner.invoke(app, ["repos", "add", str(repo), "--setup", "echo hi > hi.txt"], env=env)
    assert added.exit_code == 0, added.output
    built = runner.invoke(app, ["images", "build"], env=env)
    assert built.exit_code == 0, built.output
    assert "✓ proj: built img-" in built.output
    again = runner.invoke(app, ["images", "build", "proj"], env=env)
    assert again.exit_code == 0 and "is current" in again.output
    listed = runner.invoke(app, ["images", "list", "--json"], env=env)
    [image] = json.loads(listed.stdout)
    assert image["repo"] == "proj" and image["status"] == "ready" and image["log"] is None
    shown = runner.invoke(app, ["images", "show", image["id"]], env=env)
    assert shown.exit_code == 0 and "$ echo hi > hi.txt" in shown.output


def test_cli_errors_are_clear(cli: tuple[CliRunner, dict[str, str]], tmp_path: Path) -> None:
    runner, env = cli
    empty = runner.invoke(app, ["images", "build"], env=env)
    assert empty.exit_code == 2 and "no repos registered yet" in empty.output
    broken = make_repo(tmp_path, "broken")
    runner.invoke(app, ["repos", "add", str(broken), "--setup", "echo oops >&2; exit 4"], env=env)
    unknown = runner.invoke(app, ["images", "build", "nope"], env=env)
    assert unknown.exit_code == 2 and "unknown repo 'nope'" in unknown.output
    failed = runner.invoke(app, ["images", "build", "broken"], env=env)
    assert failed.exit_code == 1
    assert "✗ broken: setup command `echo oops >&2; exit 4` exited 4: oops" in failed.output
    assert "→ exit 4" in failed.output  # the log follows
    bad = make_repo(tmp_path, "bad", {".nightshift.toml": "setup = [\n", "a": "a\n"})
    refused = runner.invoke(app, ["repos", "add", str(bad)], env=env)
    assert refused.exit_code == 2
    assert ".nightshift.toml line 1: not valid TOML" in refused.output
    assert "bad" not in runner.invoke(app, ["repos", "list", "--json"], env=env).stdout
    missing = runner.invoke(app, ["images", "show", "img-none"], env=env)
    assert missing.exit_code == 2 and "no image 'img-none'" in missing.output


def test_bench_startup_prints_json_per_mode(cli: tuple[CliRunner, dict[str, str]]) -> None:
    runner, env = cli
    result = runner.invoke(
        app,
        ["bench", "startup", "--sessions", "1", "--files", "40", "--modes", "image,warm"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["benchmark"] == "startup" and report["sessions_per_mode"] == 1
    assert set(report["modes"]) == {"image", "warm"}
    for mode in ("image", "warm"):
        figures = report["modes"][mode]["first_model_request_ms"]
        assert figures["p50"] is not None and len(figures["samples"]) == 1
    assert report["baseline_ms"]["total"] > 0 and report["image_build_ms"] > 0
    assert report["met"]["cold"] is None  # not measured in this run
    bad = runner.invoke(app, ["bench", "startup", "--modes", "lukewarm"], env=env)
    assert bad.exit_code == 2 and "unknown mode(s) lukewarm" in bad.output


def test_bench_startup_with_an_unpullable_image_fails_in_one_line(
    cli: tuple[CliRunner, dict[str, str]],
) -> None:
    runner, env = cli
    result = runner.invoke(
        app,
        [
            *("bench", "startup", "--sessions", "1", "--files", "20", "--modes", "image"),
            *("--image", "127.0.0.1:9/bench/none:1"),
        ],
        env=env,
    )
    assert result.exit_code == 2, result.output
    assert "image 127.0.0.1:9/bench/none:1: " in result.output
