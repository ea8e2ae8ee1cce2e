"""`nightshift worker` and `nightshift beat` refuse a configuration they cannot run with, with
the variable to set; settings refuse a visibility timeout a long run would outlive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app


def _run(tmp_path: Path, *args: str, **env: str) -> Any:
    env = {"NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"), **env}
    return CliRunner().invoke(app, list(args), env=env)


def test_worker_and_beat_need_a_broker(tmp_path: Path) -> None:
    for command in ("worker", "beat"):
        result = _run(tmp_path, command)
        assert result.exit_code == 2
        assert "NIGHTSHIFT_BROKER_URL is not set" in result.output


def test_worker_needs_the_worker_token(tmp_path: Path, redis_url: str) -> None:
    result = _run(tmp_path, "worker", NIGHTSHIFT_BROKER_URL=redis_url)
    assert result.exit_code == 2 and "NIGHTSHIFT_WORKER_TOKEN is not set" in result.output


def test_worker_reports_what_keeps_it_from_starting(tmp_path: Path, redis_url: str) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = CliRunner().invoke(
        app,
        ["worker"],
        env={
            "NIGHTSHIFT_DATA_DIR": str(blocker),
            "NIGHTSHIFT_BROKER_URL": redis_url,
            "NIGHTSHIFT_WORKER_TOKEN": "w" * 24,
        },
    )
    assert result.exit_code == 2 and "the worker cannot start" in result.output


def test_a_visibility_timeout_below_the_longest_run_is_refused(make_settings: Any) -> None:
    with pytest.raises(ValueError, match="NIGHTSHIFT_VISIBILITY_TIMEOUT"):
        make_settings(visibility_timeout=600, sandbox_timeout=3600)
    with pytest.raises(ValueError, match="at least 16"):
        make_settings(worker_token="short")
