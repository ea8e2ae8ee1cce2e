"""Fixtures for image tests: a runtime on real bubblewrap sandboxes with no schedule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import git


@pytest.fixture
def rt(make_settings: Any) -> Iterator[Any]:
    """A runtime that is built but not serving: tests drive builds and pools themselves."""
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(image_interval=0, images_keep=2))
    yield runtime
    runtime.close()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Commit `files` (path -> content) on the repository's current branch; the new sha."""
    for path, content in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()
