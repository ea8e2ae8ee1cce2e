"""Pages a repository asks to have captured after each finished prompt (`.nightshift.toml`):

    serve = "python3 -m http.server 8000"
    serve_port = 8000
    screenshots = [{path = "/", name = "home"}, {path = "/about.html", name = "about"}]

`serve` runs in the session's sandbox as a background job; each page is then captured from
`http://127.0.0.1:<serve_port><path>` by the browser inside the sandbox. Paths and names come
from the repository, so they are checked as strictly as anything else in the file.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

MAX_PAGES = 10
PAGE_KEYS = ("serve", "serve_port", "screenshots")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?#-]{0,499}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


class Page(BaseModel):
    path: str = "/"
    """A path on the served app, starting with `/`."""
    name: str
    """A short label (letters, digits, `-`, `_`)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _PATH_RE.match(value) or value.startswith("//"):
            raise ValueError(f"screenshot path {value!r} must be a path starting with one /")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"screenshot name {value!r}: letters, digits, - and _ (at most 40)")
        return value


class PagesSpec(BaseModel):
    """The three keys together; screenshots need both `serve` and `serve_port`."""

    serve: str | None = Field(None, min_length=1, max_length=2000)
    serve_port: int | None = Field(None, ge=1, le=65535)
    screenshots: list[Page] | None = Field(None, max_length=MAX_PAGES)


def parse_pages(data: dict[str, Any]) -> PagesSpec:
    """The page keys of a parsed `.nightshift.toml`; ValueError saying what is wrong."""
    try:
        spec = PagesSpec.model_validate({k: data[k] for k in PAGE_KEYS if k in data})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
    if spec.screenshots and (spec.serve is None or spec.serve_port is None):
        raise ValueError("screenshots need serve (the command) and serve_port")
    names = [p.name for p in spec.screenshots or []]
    if len(set(names)) != len(names):
        raise ValueError("screenshot names must be distinct")
    return spec
