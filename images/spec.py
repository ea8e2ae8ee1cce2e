"""Repo specs: what a repository is, how its image is prepared and what its sandboxes may do."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

_HOST_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BRANCH_RE = re.compile(r"^(?!/)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<!/)(?<!\.lock)$")


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

    @field_validator("base")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not _BRANCH_RE.match(value):
            raise ValueError(f"{value!r} is not a valid branch name")
        return value

    @field_validator("egress")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for raw in value:
            host = raw.strip().lower().rstrip(".")
            if not _HOST_RE.match(host) or host.replace(".", "").isdigit():
                raise ValueError(
                    f"egress entry {raw!r} is not a host name (IP literals are refused)"
                )
            hosts.append(host)
        return hosts

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_RE.match(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
        return value

    def image_hash(self) -> str:
        """Hash of everything that shapes an image; a change forces a rebuild."""
        relevant = {"setup": self.setup, "warm": self.warm, "env": self.env, "base": self.base}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def slug(self) -> str:
        """A file-name-safe form of the name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "--", self.name)
