"""A repository's `.devcontainer/devcontainer.json`, used when its spec declares no environment.

Honoured: `image`; `build.dockerfile` and `build.context` (relative to the file's folder, as
the Dev Containers spec says; the older top-level `dockerFile`/`context` too); `containerEnv`;
`onCreateCommand`, `updateContentCommand` and `postCreateCommand` (each a string, an argument
list, or an object of named commands) as set-up steps, in that order, before the spec's own,
run on the image or Dockerfile the file names (`images.environments.declared`). Ignored:
editor settings (`customizations`, `name`, `forwardPorts`, `remoteUser`, ...). Refused with
one line: `features` (they install software by scripts we do not run; install it in the
image or a Dockerfile instead), `dockerComposeFile`, and a file that is not JSON with comments.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images.errors import ImagesError
from images.spec import check_env, check_image, check_repo_path

DEVCONTAINER_FILE = ".devcontainer/devcontainer.json"
MAX_BYTES = 256 * 1024
LIFECYCLE = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
"""The commands a dev container runs once when it is created, in this order: set-up steps."""


class DevcontainerError(ImagesError, ValueError):
    """A devcontainer.json that cannot be used; the message names the file, line and reason."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        where = f" line {line}" if line is not None else ""
        super().__init__(f"{DEVCONTAINER_FILE}{where}: {reason}")
        self.line = line


@dataclass
class Devcontainer:
    image: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)


def strip_jsonc(text: str) -> str:
    """`text` with `//` and `/* */` comments and trailing commas blanked out; every other
    character (and every newline) stays where it was, so JSON errors keep their line."""
    out = list(text)
    i, n = 0, len(text)
    last_comma: int | None = None
    while i < n:
        c = text[i]
        if c == '"':
            last_comma = None
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if out[j] != "\n":
                    out[j] = " "
            i = end
            continue
        if c == ",":
            last_comma = i
        elif c in "}]" and last_comma is not None:
            out[last_comma] = " "
            last_comma = None
        elif not c.isspace():
            last_comma = None
        i += 1
    return "".join(out)


def _line_of(text: str, key: str) -> int | None:
    index = text.find(f'"{key}"')
    return text.count("\n", 0, index) + 1 if index >= 0 else None


def _in_repo(folder: str, value: Any, what: str, line: int | None) -> str:
    if not isinstance(value, str):
        raise DevcontainerError(f"{what} must be a string", line)
    joined = posixpath.normpath(posixpath.join(folder, value))
    try:
        return check_repo_path(joined, what)
    except ValueError as exc:
        raise DevcontainerError(str(exc), line) from exc


def _commands(value: Any, key: str, line: int | None) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return [shlex.join(value)] if value else []
    if isinstance(value, dict):
        out: list[str] = []
        for name, item in value.items():
            try:
                out += _commands(item, key, line)
            except DevcontainerError:
                raise DevcontainerError(
                    f"{key}.{name} must be a string or a list of strings", line
                ) from None
        return out
    raise DevcontainerError(f"{key} must be a string, a list or an object", line)


def parse_devcontainer(text: str) -> Devcontainer:
    """What a devcontainer.json declares; DevcontainerError names the line and the reason."""
    try:
        data = json.loads(strip_jsonc(text))
    except json.JSONDecodeError as exc:
        raise DevcontainerError(f"not valid JSON with comments: {exc.msg}", exc.lineno) from exc
    if not isinstance(data, dict):
        raise DevcontainerError("must be a JSON object")
    if "dockerComposeFile" in data:
        raise DevcontainerError(
            "dockerComposeFile is not supported; name an image or a Dockerfile",
            _line_of(text, "dockerComposeFile"),
        )
    folder = posixpath.dirname(DEVCONTAINER_FILE)
    result = Devcontainer()
    build = data.get("build", {})
    if not isinstance(build, dict):
        raise DevcontainerError("build must be an object", _line_of(text, "build"))
    dockerfile = build.get("dockerfile", data.get("dockerFile"))
    if "image" in data:
        line = _line_of(text, "image")
        if not isinstance(data["image"], str):
            raise DevcontainerError("image must be a string", line)
        try:
            result.image = check_image(data["image"])
        except ValueError as exc:
            raise DevcontainerError(str(exc), line) from exc
    elif dockerfile is not None:
        result.dockerfile = _in_repo(folder, dockerfile, "dockerfile", _line_of(text, "dockerfile"))
        context = build.get("context", data.get("context", "."))
        result.context = _in_repo(folder, context, "context", _line_of(text, "context"))
    if data.get("features"):
        features = data["features"]
        result.features = list(features) if isinstance(features, dict) else ["features"]
        raise DevcontainerError(
            f"features are not supported ({', '.join(result.features)}); install them in "
            "the image or a Dockerfile",
            _line_of(text, "features"),
        )
    env = data.get("containerEnv", {})
    line = _line_of(text, "containerEnv")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise DevcontainerError("containerEnv must map names to strings", line)
    try:
        result.env = check_env(dict(env))
    except ValueError as exc:
        raise DevcontainerError(str(exc), line) from exc
    for key in LIFECYCLE:
        if key in data:
            result.setup += _commands(data[key], key, _line_of(text, key))
    return result


def read_devcontainer(workspace: Path) -> Devcontainer | None:
    """The devcontainer.json of a fresh host-side clone (None: there is none); symlinks are
    refused, not followed."""
    path = workspace / DEVCONTAINER_FILE
    if path.parent.is_symlink():
        raise DevcontainerError("its folder must not be a symlink")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DevcontainerError("must be a regular file, not a symlink") from exc
        raise DevcontainerError(f"cannot be read: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DevcontainerError("must be a regular file")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise DevcontainerError(f"is larger than {MAX_BYTES} bytes")
    try:
        return parse_devcontainer(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DevcontainerError("is not UTF-8 text") from exc
