"""Repo specs: what a repository is, how its image is prepared and what its sandboxes may do.

A spec comes from the control DB (`nightshift repos add`, `POST /api/repos`) and may be
completed by a `.nightshift.toml` at the root of the repository's base branch:

    setup = ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
    warm = [".venv/bin/python -m pytest -q"]
    egress = ["pypi.org", "files.pythonhosted.org"]

    image = "registry.corp/dev/python:3.12"   # or: dockerfile = "ci/Dockerfile", context = "."
    devcontainer = false                       # never read .devcontainer/devcontainer.json

    [env]
    PYTHONDONTWRITEBYTECODE = "1"

The file wins where both say something: its `setup`, `warm` and `egress` replace the stored
lists, its `env` entries override stored ones of the same name, and an `image` or
`dockerfile` it names replaces the stored environment. `image` (an OCI reference) and
`dockerfile` (a path in the repository, built with `context`, default its directory) are
exclusive; with neither the environment is the host's tools. A malformed file is refused
with its line and the reason (`SpecFileError`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from images.errors import ImagesError
from images.oci import parse_reference
from images.pages import PAGE_KEYS, Page

SPEC_FILE = ".nightshift.toml"
SPEC_FILE_MAX_BYTES = 64 * 1024
SPEC_FILE_KEYS = (
    "setup",
    "warm",
    "verify",
    "protected",
    "env",
    "egress",
    "image",
    "dockerfile",
    "context",
    "devcontainer",
    *PAGE_KEYS,
    "ci_fix_attempts",
)
SPEC_CI_FIX_MAX = 10
"""The most CI fix attempts per PR a repository's own file may ask for."""

_HOST_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BRANCH_RE = re.compile(r"^(?!/)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<!/)(?<!\.lock)$")
_TOML_AT_RE = re.compile(r"\(at line (\d+), column \d+\)$")
_HEADER_RE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def check_hosts(value: list[str]) -> list[str]:
    """Normalised egress host names; IP literals and anything else are refused."""
    hosts = []
    for raw in value:
        host = raw.strip().lower().rstrip(".")
        if not _HOST_RE.match(host) or host.replace(".", "").isdigit():
            raise ValueError(f"egress entry {raw!r} is not a host name (IP literals are refused)")
        hosts.append(host)
    return hosts


def check_repo_path(value: str, what: str) -> str:
    """A relative path inside the repository, normalised; absolute paths and `..` are refused."""
    text = value.strip()
    if not text or "\x00" in text:
        raise ValueError(f"{what} must be a path in the repository")
    if text.startswith("/") or ".." in Path(text).parts:
        raise ValueError(f"{what} {value!r} must be a relative path inside the repository")
    return Path(text).as_posix()


def check_image(value: str) -> str:
    """An OCI reference that parses, as written (ReferenceError's reason otherwise)."""
    parse_reference(value)
    return value.strip()


def check_env(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        if not _ENV_RE.match(key):
            raise ValueError(f"env name {key!r} is not a valid variable name")
    return value


class RepoSpec(BaseModel):
    """A repository Nightshift can work on."""

    name: str
    url: str
    """A local path (local forge) or `owner/name` / a GitHub URL (GitHub forge)."""
    forge: Literal["local", "github"] = "local"
    base: str = "main"
    setup: list[str] = Field(default_factory=list)
    warm: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    egress: list[str] = Field(default_factory=list)
    description: str = ""
    pool_size: int = 0
    image: str | None = None
    """An OCI reference the sandbox's root filesystem comes from (None: the host's tools)."""
    dockerfile: str | None = None
    """A Dockerfile in the repository to build the environment from."""
    context: str | None = None
    """The Dockerfile's build context, relative to the repository (None: its directory)."""
    verify: list[str] = Field(default_factory=list)
    """Commands (tests, lint, type checks) run when the agent calls `finish`."""
    protected: list[str] = Field(default_factory=list)
    """Globs of paths the agent may read but not write (the `protected` plugin)."""
    devcontainer: bool = True
    """Whether the repository's `.devcontainer/devcontainer.json` may declare the environment
    (when nothing else does). Off: a server that cannot reach the registry it names, or a
    team that wants the host's tools, opts out without changing the repository."""
    serve: str | None = None
    serve_port: int | None = None
    screenshots: list[Page] = Field(default_factory=list)
    """Pages captured after each finished prompt (`images/pages.py`)."""
    ci_fix_attempts: int | None = None
    """Failing checks sent back per PR, from the spec file (None: the repo's or server's)."""

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else check_image(value)

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_path(value, "dockerfile")

    @field_validator("context")
    @classmethod
    def _context(cls, value: str | None) -> str | None:
        return None if value is None else check_repo_path(value, "context")

    @model_validator(mode="after")
    def _one_environment(self) -> RepoSpec:
        if self.image is not None and self.dockerfile is not None:
            raise ValueError("image and dockerfile are exclusive; give one of them")
        if self.context is not None and self.dockerfile is None:
            raise ValueError("context is the Dockerfile's build context; it needs dockerfile")
        return self

    def environment(self) -> str:
        """Which environment sandboxes run: `host`, `image <ref>` or `dockerfile <path>`."""
        if self.image is not None:
            return f"image {self.image}"
        if self.dockerfile is not None:
            return f"dockerfile {self.dockerfile}"
        return "host"

    @field_validator("base")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not _BRANCH_RE.match(value):
            raise ValueError(f"{value!r} is not a valid branch name")
        return value

    @field_validator("egress")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return check_hosts(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_env(value)

    def image_hash(self) -> str:
        """Hash of everything that shapes an image; a change forces a rebuild."""
        relevant: dict[str, object] = {
            "setup": self.setup,
            "warm": self.warm,
            "env": self.env,
            "egress": self.egress,
            "base": self.base,
        }
        if self.image is not None or self.dockerfile is not None:
            relevant["environment"] = [self.image, self.dockerfile, self.context]
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def slug(self) -> str:
        """A file-name-safe form of the name, distinct for distinct names."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "--", self.name)
        if safe == self.name:
            return safe
        return f"{safe}-{hashlib.sha256(self.name.encode()).hexdigest()[:8]}"

    def with_file(self, file: SpecFile | None) -> RepoSpec:
        """This spec completed by a `.nightshift.toml`: the file wins where both say something."""
        if file is None:
            return self
        update: dict[str, Any] = {}
        if file.setup is not None:
            update["setup"] = list(file.setup)
        if file.warm is not None:
            update["warm"] = list(file.warm)
        if file.verify is not None:
            update["verify"] = list(file.verify)
        if file.protected is not None:
            update["protected"] = list(file.protected)
        if file.egress is not None:
            update["egress"] = list(file.egress)
        if file.ci_fix_attempts is not None:
            update["ci_fix_attempts"] = file.ci_fix_attempts
        if file.env is not None:
            update["env"] = {**self.env, **file.env}
        if file.use_devcontainer is not None:
            update["devcontainer"] = file.use_devcontainer
        if file.screenshots is not None:
            update.update(serve=file.serve, serve_port=file.serve_port)
            update["screenshots"] = list(file.screenshots)
        if file.image is not None:
            update.update(image=file.image, dockerfile=None, context=None)
        elif file.dockerfile is not None:
            update.update(image=None, dockerfile=file.dockerfile, context=file.context)
        return self.model_copy(update=update)


class SpecFileError(ImagesError, ValueError):
    """A `.nightshift.toml` that cannot be used; `line` is 1-based (None: the whole file)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{SPEC_FILE} {where}{reason}")


class SpecFile(BaseModel):
    """What a `.nightshift.toml` says; None where it says nothing."""

    setup: list[str] | None = None
    warm: list[str] | None = None
    verify: list[str] | None = None
    protected: list[str] | None = None
    env: dict[str, str] | None = None
    egress: list[str] | None = None
    image: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    use_devcontainer: bool | None = None
    """The file's `devcontainer = true|false` (named apart from the devcontainer.json an
    image record keeps under `devcontainer`)."""
    serve: str | None = None
    serve_port: int | None = None
    screenshots: list[Page] | None = None
    ci_fix_attempts: int | None = None
