"""`nightshift sandbox exec` and `nightshift bench sandbox`, as an operator runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.factories import make_repo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_exec_prints_output_and_exits_with_the_command(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(
        app, ["sandbox", "exec", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"]
    )
    assert result.exit_code == 3, result.output
    assert result.stdout == "hi\n"
    assert (
        "oops" in result.stderr
        and "exit 3 in" in result.stderr
        and "bwrap sandbox" in result.stderr
    )
    assert not list((tmp_path / "data" / "scratch").iterdir())  # the scratch image is gone
    assert not list((tmp_path / "data" / "sandboxes").iterdir())


def test_exec_json_names_the_limit(cli: CliRunner) -> None:
    result = cli.invoke(app, ["sandbox", "exec", "--json", "--timeout", "1", "--", "sleep", "30"])
    assert result.exit_code == 124
    data = json.loads(result.stdout)
    assert data["ended_by"] == "timeout" and data["timed_out"] and data["backend"] == "bwrap"
    result = cli.invoke(
        app,
        ["sandbox", "exec", "--memory-mb", "64", "--", "python3", "-c", "b = bytearray(300 << 20)"],
    )
    assert result.exit_code == 137 and "(memory limit)" in result.stderr


def test_exec_from_a_repo_image(cli: CliRunner, tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "proj", {"README.md": "# proj\n", "src/x.py": "X = 1\n"})
    assert cli.invoke(app, ["repos", "add", str(repo)]).exit_code == 0
    result = cli.invoke(
        app,
        [
            "sandbox",
            "exec",
            "--repo",
            "proj",
            "--",
            "sh",
            "-c",
            "cat src/x.py && git log --format=%s",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "X = 1\ninitial commit\n"


def test_exec_refuses_bad_input(cli: CliRunner) -> None:
    nothing = cli.invoke(app, ["sandbox", "exec"])
    assert nothing.exit_code == 2 and "give the command after --" in nothing.stderr
    literal = cli.invoke(app, ["sandbox", "exec", "--egress", "10.0.0.1", "--", "true"])
    assert literal.exit_code == 2 and "IP literals are refused" in " ".join(literal.stderr.split())
    unknown = cli.invoke(app, ["sandbox", "exec", "--repo", "nope", "--", "true"])
    assert unknown.exit_code == 2 and "nope" in unknown.stderr
    backend = cli.invoke(app, ["sandbox", "exec", "--backend", "vm", "--", "true"])
    assert backend.exit_code == 2 and "sandbox" in backend.stderr


def test_bench_sandbox_prints_json(cli: CliRunner) -> None:
    result = cli.invoke(
        app, ["bench", "sandbox", "--backend", "bwrap", "--runs", "3", "--no-big", "--crowd", "4"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["host"]["cpus"] >= 1
    (bwrap,) = report["results"]
    assert bwrap["backend"] == "bwrap" and bwrap["runs"] == 3
    assert bwrap["start_to_first_exec_ms"]["p50"] > 0
    assert bwrap["exec_round_trip_ms"]["p95"] >= bwrap["exec_round_trip_ms"]["p50"]
    assert set(bwrap["snapshot_ms"]) == {"1MB"} and bwrap["restore_ms"]["1MB"] > 0
    assert bwrap["targets_ms"]["start_to_first_exec_p50"]["target"] == 30.0
    assert bwrap["crowd"] == 4  # the same commands with 4 other sandboxes alive
    for figure in (
        "exec_round_trip_among_crowd",
        "first_exec_among_crowd",
        "second_exec_among_crowd",
    ):
        assert bwrap[f"{figure}_ms"]["p95"] >= bwrap[f"{figure}_ms"]["p50"] > 0
    refused = cli.invoke(app, ["bench", "sandbox", "--backend", "fake"])
    assert refused.exit_code == 2


def test_info_describes_the_enforcement(cli: CliRunner) -> None:
    result = cli.invoke(app, ["sandbox", "info"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "bwrap" and report["runtime"].startswith("bwrap-")
    assert set(report["enforcement"]) == {"memory", "pids", "kill"}
    assert report["limits"]["pids"] == 256
