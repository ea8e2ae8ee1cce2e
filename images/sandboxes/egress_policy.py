"""The egress proxy's policy vocabulary: targets, refusals, and the operator's settings
(`NIGHTSHIFT_EGRESS_PRIVATE_HOSTS`, `NIGHTSHIFT_EGRESS_UPSTREAM_PROXY`) parsed."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from images.errors import ImagesError

ALLOWLIST_HINT = "the repository's `egress` list"
PORTS_HINT = "NIGHTSHIFT_SANDBOX_EGRESS_PORTS"
PRIVATE_HINT = "NIGHTSHIFT_EGRESS_PRIVATE_HOSTS"


class Refused(ImagesError):
    def __init__(self, status: int, reason: str, allow_with: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.allow_with = allow_with
        self.reason = f"{reason} (allow with {allow_with})" if allow_with else reason


@dataclass(frozen=True)
class PrivateHost:
    """An operator-named destination that may resolve to a private or loopback address."""

    host: str
    port: int | None = None

    def allows(self, host: str, port: int) -> bool:
        return self.host == host and self.port in (None, port)


def parse_private_hosts(text: str) -> tuple[PrivateHost, ...]:
    """`host[:port],...` -> PrivateHost entries; ValueError naming the bad entry."""
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "/" in item or "*" in item:
            raise ValueError(f"{item!r}: name one host[:port], not a range or wildcard")
        try:
            host, port = split_authority(item, 0) if _has_port(item) else (_bare(item), 0)
        except Refused as exc:
            raise ValueError(f"{item!r}: {exc.reason}") from None
        if is_ip_literal(host):
            raise ValueError(f"{item!r}: name a host, as repositories' egress lists do (no IPs)")
        entries.append(PrivateHost(host, port or None))
    return tuple(entries)


def _has_port(item: str) -> bool:
    if item.startswith("["):
        return "]:" in item
    return item.count(":") == 1


def _bare(item: str) -> str:
    host = item.strip("[]").lower().rstrip(".")
    if not host:
        raise Refused(400, "empty host")
    return host


def parse_upstream(url: str) -> tuple[str, int]:
    """`http://host:port` (or `host:port`) -> (host, port); ValueError when malformed."""
    rest = url.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme.lower() != "http":
            raise ValueError(f"{url!r}: only http:// upstream proxies are supported")
    rest = rest.rstrip("/")
    if "@" in rest or "/" in rest:
        raise ValueError(f"{url!r}: give http://host:port, without credentials or a path")
    try:
        return split_authority(rest, 3128)
    except Refused as exc:
        raise ValueError(f"{url!r}: {exc.reason}") from None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` -> (host, port); raises Refused(400) when malformed."""
    authority = authority.strip()
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    else:
        host, port_text = authority, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise Refused(400, f"bad port in {authority!r}") from None
    if not host or not 0 < port < 65536:
        raise Refused(400, f"bad target {authority!r}")
    return host.lower().rstrip("."), port
