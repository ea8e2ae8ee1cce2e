"""The `nightshift` command line, run as a new user would run it: a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.cluster import free_port
from tests.factories import git, make_repo
from tests.fakes.llm import ScriptBook, Turn


def _cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # No server answers on this port: `run` and `sessions` serve the data dir themselves.
    env = {"NIGHTSHIFT_PORT": str(free_port()), **env}
    return subprocess.run(
        [str(Path(sys.executable).with_name("nightshift")), *args],
        env={**os.environ, **env, "COLUMNS": "200", "NO_COLOR": "1"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _model_env(openai_fake: ScriptBook, tmp_path: Path) -> dict[str, str]:
    return {
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
        "NIGHTSHIFT_MODEL": "openai:fake",
        "OPENAI_BASE_URL": openai_fake.url,  # type: ignore[attr-defined]
        "OPENAI_API_KEY": "sk-test-cli-0123456789abcdef",
    }


def test_run_streams_and_ends_with_a_branch_authored_by_the_git_user(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path, "some-repo")
    openai_fake.script(
        "CONTRIBUTING",
        Turn.tool("list_files", "Let me look.", path="."),
        Turn.tool(
            "write_file", "Writing the guide.", path="CONTRIBUTING.md", content="# Contributing\n"
        ),
        Turn.tool("finish", summary="Added a contributing guide.", title="Add CONTRIBUTING.md"),
    )
    env = _model_env(openai_fake, tmp_path)
    result = _cli(["run", "--repo", str(repo), "add a CONTRIBUTING.md"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no server at http://127.0.0.1:" in out and "for this command only" in out
    assert "registered repo some-repo" in out
    # Its own start-up, apart from the sandbox's (which counts from the prompt).
    ready = re.search(r"command ready to send the prompt (\d+) ms after it started", out)
    assert ready is not None and 0 < int(ready.group(1)) < 600_000
    assert out.index(ready.group(0)) < out.index("sandbox ready from")
    assert "Writing the guide." in out and "write_file CONTRIBUTING.md" in out
    branch = next(line.split()[1] for line in out.splitlines() if line.startswith("branch "))
    assert branch.startswith("nightshift/")
    assert "pull request" in out
    author = git(repo, "log", "-1", "--format=%an <%ae>", branch).strip()
    assert author == "Local Tester <local.tester@example.com>"
    # The same data dir knows the session afterwards.
    listed = _cli(["sessions", "list"], env, tmp_path)
    assert listed.returncode == 0 and "finished" in listed.stdout and "some-repo" in listed.stdout
    session_id = branch.removeprefix("nightshift/")
    shown = _cli(["sessions", "show", session_id], env, tmp_path)
    assert (
        shown.returncode == 0
        and '"status": "finished"' in shown.stdout
        and "add a CONTRIBUTING.md" in shown.stdout
    )


def test_streamed_text_stays_whole_under_the_live_spinner(
    openai_fake: ScriptBook, tmp_path: Path
) -> None:
    """On a terminal, `run` shows a spinner; the model's streamed text (sent in 8-character
    pieces) must still print as whole lines."""
    repo = make_repo(tmp_path, "some-repo")
    sentence = "I will write a short contributing guide for this project."
    openai_fake.script(
        "CONTRIBUTING",
        Turn.tool("write_file", sentence, path="CONTRIBUTING.md", content="# Contributing\n"),
        Turn.tool("finish", summary="Added a contributing guide.", title="Add CONTRIBUTING.md"),
    )
    env = {
        **_model_env(openai_fake, tmp_path),
        "FORCE_COLOR": "1",  # a terminal, as far as the live display is concerned
        "TTY_INTERACTIVE": "1",
    }
    result = _cli(["run", "--repo", str(repo), "add a CONTRIBUTING.md"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout).replace("\r", "\n")
    assert sentence in plain, plain


def test_run_without_a_model_fails_with_the_reason(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "r")
    result = _cli(
        ["run", "--repo", str(repo), "anything"],
        {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "d")},
        tmp_path,
    )
    assert result.returncode == 1
    assert "NIGHTSHIFT_MODEL" in result.stderr and "error:" in result.stderr


def test_run_on_something_that_is_not_a_repo_is_an_error_line(tmp_path: Path) -> None:
    result = _cli(
        ["run", "--repo", "no-such-repo", "x"],
        {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "d")},
        tmp_path,
    )
    assert result.returncode == 1 and "error: unknown repo 'no-such-repo'" in result.stderr


def test_repos_and_tokens(tmp_path: Path) -> None:
    env = {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "d")}
    repo = make_repo(tmp_path, "proj")
    added = _cli(
        ["repos", "add", str(repo), "--description", "the project", "--setup", "make deps"],
        env,
        tmp_path,
    )
    assert added.returncode == 0 and "added proj" in added.stdout
    assert f"in the data dir {(tmp_path / 'd').resolve()}" in " ".join(added.stdout.split())
    assert "NIGHTSHIFT_SERVER" not in added.stdout
    # A client's server setting does not make `repos add` register there: it says so.
    other = make_repo(tmp_path, "other")
    server_named = {**env, "NIGHTSHIFT_SERVER": "http://127.0.0.1:9"}
    elsewhere = _cli(["repos", "add", str(other)], server_named, tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "not on that server" in " ".join(elsewhere.stdout.split())
    again = _cli(["repos", "add", str(repo)], env, tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--name" in again.stderr  # says how to pick another
    bad = _cli(["repos", "add", str(tmp_path)], env, tmp_path)
    assert bad.returncode == 2 and "not a git repository" in bad.stderr
    listed = _cli(["repos", "list", "--json"], env, tmp_path)
    assert '"setup": [\n      "make deps"\n    ]' in listed.stdout
    token = _cli(
        ["tokens", "create", "--name", "Dee Dev", "--email", "dee@example.com"], env, tmp_path
    )
    assert (
        token.returncode == 0
        and token.stdout.strip().startswith("ns_")
        and "shown only once" in token.stderr
    )
    bad_email = _cli(["tokens", "create", "--name", "X", "--email", "nope"], env, tmp_path)
    assert bad_email.returncode == 2 and "not an email address" in bad_email.stderr
    helped = _cli(["--help"], env, tmp_path)
    for command in ("serve", "run", "repos", "sessions", "tokens"):
        assert command in helped.stdout
