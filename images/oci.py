"""OCI image references: `[registry[:port]/]path[:tag][@sha256:digest]`, as Docker reads them.

`parse_reference` refuses what does not parse with the reason; a reference with no registry
is Docker Hub's (`python:3.12-slim` is `docker.io/library/python:3.12-slim`), one with no tag
or digest is `:latest`. `plain_http` tells a registry on a loopback address (to be reached
over plain HTTP, as Docker does for localhost) from every other (HTTPS).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from images.errors import ImagesError

DEFAULT_REGISTRY = "docker.io"
MAX_REFERENCE = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


class ReferenceError(ImagesError, ValueError):
    """An image reference that does not parse; the message says why."""


@dataclass(frozen=True)
class Reference:
    registry: str
    path: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.path}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def host(self) -> str:
        """The registry's host name or address, without port or brackets."""
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def plain_http(self) -> bool:
        """True for registries on loopback addresses, reached over HTTP."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_reference(text: str) -> Reference:
    """`text` as a Reference; ReferenceError names what is wrong."""
    raw = text.strip()
    if not raw:
        raise ReferenceError("image reference is empty")
    if len(raw) > MAX_REFERENCE:
        raise ReferenceError(f"image reference is longer than {MAX_REFERENCE} characters")
    if any(c.isspace() for c in raw):
        raise ReferenceError(f"image reference {raw!r} contains whitespace")
    rest, digest = raw, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ReferenceError(
                f"image reference {raw!r}: digest {digest!r} is not sha256: and 64 hex digits"
            )
    registry = DEFAULT_REGISTRY
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST_RE.match(first):
            raise ReferenceError(f"image reference {raw!r}: {first!r} is not a registry host")
        registry, rest = first, remainder
    tag = None
    last_slash = rest.rfind("/")
    if ":" in rest[last_slash + 1 :]:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise ReferenceError(f"image reference {raw!r}: tag {tag!r} is not a valid tag")
    if not _PATH_RE.match(rest):
        raise ReferenceError(
            f"image reference {raw!r}: repository {rest!r} must be lowercase letters, digits "
            "and separators (. _ - /)"
        )
    if registry == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, rest, tag, digest)
