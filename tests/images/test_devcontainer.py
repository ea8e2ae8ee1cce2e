"""A repository's devcontainer.json: the honoured fields, JSON with comments, and refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from images.devcontainer import DevcontainerError, parse_devcontainer, read_devcontainer

FULL = """// the team's dev container
{
  "name": "demo", /* editor-only */
  "build": {
    "dockerfile": "Dockerfile",   // next to this file
    "context": "..",
  },
  "containerEnv": {"PIP_INDEX_URL": "http://mirror.internal/simple", },
  "postCreateCommand": {"deps": "pip install -e .", "tools": ["make", "tools"]},
  "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
  "url": "http://example.com/not//a/comment",
}
"""


def test_honoured_fields_of_a_dockerfile_devcontainer() -> None:
    dev = parse_devcontainer(FULL)
    assert (dev.image, dev.dockerfile, dev.context) == (None, ".devcontainer/Dockerfile", ".")
    assert dev.env == {"PIP_INDEX_URL": "http://mirror.internal/simple"}
    assert dev.setup == ["pip install -e .", "make tools"]


def test_image_devcontainer_with_lifecycle_commands_in_order() -> None:
    dev = parse_devcontainer(
        '{"image": "127.0.0.1:5000/dev/py:1", "postCreateCommand": "make",'
        ' "onCreateCommand": ".devcontainer/on-create.sh", "updateContentCommand": ["uv", "sync"]}'
    )
    assert (dev.image, dev.dockerfile) == ("127.0.0.1:5000/dev/py:1", None)
    assert dev.setup == [".devcontainer/on-create.sh", "uv sync", "make"]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            '{\n  "name": "x",\n  "features": {"ghcr.io/devcontainers/features/node:1": {}}\n}',
            3,
            "features are not supported .ghcr.io/devcontainers/features/node:1",
        ),
        (
            '{\n  "image": "debian",\n  "features": {"ghcr.io/devcontainers/features/node:1": {}}\n}',
            3,
            "features are not supported .ghcr.io/devcontainers/features/node:1",
        ),
        ('{\n  "image": "debian"\n  "x": 1\n}', 3, "not valid JSON with comments"),
        ('{\n\n  "image": "Debian Latest"\n}', 3, "whitespace"),
        ('{\n  "build": {"dockerfile": "../../Dockerfile"}\n}', 2, "inside the repository"),
        ('{\n  "dockerComposeFile": "compose.yml"\n}', 2, "dockerComposeFile is not supported"),
        ('{"image": "debian", "postCreateCommand": 3}', 1, "postCreateCommand must be"),
        ('{"image": "debian", "containerEnv": {"1X": "y"}}', 1, "not a valid variable name"),
    ],
)
def test_bad_devcontainers_fail_with_one_line_naming_file_and_line(
    text: str, line: int, reason: str
) -> None:
    with pytest.raises(DevcontainerError, match=reason) as failed:
        parse_devcontainer(text)
    assert failed.value.line == line
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f".devcontainer/devcontainer.json line {line}: ")


def test_read_from_a_clone_and_symlinks_refused(tmp_path: Path) -> None:
    assert read_devcontainer(tmp_path) is None
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / "elsewhere.json").write_text('{"image": "debian"}')
    os.symlink(tmp_path / "elsewhere.json", tmp_path / ".devcontainer/devcontainer.json")
    with pytest.raises(DevcontainerError, match="symlink"):
        read_devcontainer(tmp_path)
    (tmp_path / ".devcontainer/devcontainer.json").unlink()
    (tmp_path / ".devcontainer/devcontainer.json").write_text('{"image": "debian"} // ok')
    found = read_devcontainer(tmp_path)
    assert found is not None and found.image == "debian"


def test_a_symlinked_devcontainer_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "devcontainer.json").write_text('{"image": "debian"}')
    clone = tmp_path / "clone"
    clone.mkdir()
    os.symlink(elsewhere, clone / ".devcontainer")
    with pytest.raises(DevcontainerError, match="its folder must not be a symlink"):
        read_devcontainer(clone)
