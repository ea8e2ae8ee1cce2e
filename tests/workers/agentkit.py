"""What the agent-loop tests share: an image for the fake backend to start from."""

from __future__ import annotations

from pathlib import Path

from images.sandboxes.base import ImageRef


def fake_image(tmp_path: Path) -> ImageRef:
    """An image record the fake backend starts sandboxes from (it holds no files)."""
    return ImageRef(
        id="img",
        repo="proj",
        sha="0" * 40,
        backend="fake",
        location=str(tmp_path / "none"),
        runtime="fake-1",
        built_at=0,
    )
