"""`nightshift bench startup --image REF`: prompt → first model request from an image on a
declared environment, with its first pull timed and its 150 ms target, from a real registry
on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.fakes.registry import missing_tool
from tests.images.oci_fixtures import registry, tool_image

__all__ = ["registry", "tool_image"]  # fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_tool() is not None, reason=str(missing_tool())),
]


def test_bench_startup_times_sessions_on_a_declared_image(tool_image: str) -> None:
    argv = ["bench", "startup", "--image", tool_image, "--modes", "image"]
    done = CliRunner().invoke(app, [*argv, "--sessions", "2", "--files", "20"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    environment = report["environment"]
    assert environment["image"] == tool_image and environment["digest"].startswith("sha256:")
    assert environment["first_pull_and_unpack_ms"] >= environment["resolve_ms"] >= 0
    assert environment["setup"] == "none: the image has no python3"  # a busybox image
    figures = report["modes"]["image"]["first_model_request_ms"]
    assert len(figures["samples"]) == 2 and 0 < figures["p50"] <= max(figures["samples"])
    assert report["targets"]["image_p50_ms"] == 150
    assert report["met"]["image"] == (figures["p50"] <= 150)
    assert report["unchanged_skip_ms"] >= 0


def test_bench_startup_refuses_an_image_that_does_not_resolve(tool_image: str) -> None:
    missing = tool_image.rsplit(":", 1)[0] + "-absent:1"
    argv = ["bench", "startup", "--image", missing, "--modes", "image", "--files", "20"]
    done = CliRunner().invoke(app, argv)
    assert done.exit_code != 0
    assert "absent" in done.output and "Traceback" not in done.output
