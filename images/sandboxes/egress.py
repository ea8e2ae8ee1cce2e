"""The egress proxy: the only way out of a local sandbox, and only to allowlisted hosts.

Each sandbox with an allowlist gets a unix socket, bound into it read-only; inside, a bridge
(`bridge.py`) forwards `127.0.0.1:3128` to that socket and `HTTP(S)_PROXY` point there. The
proxy speaks HTTP `CONNECT` (HTTPS and anything tunnelled) and absolute-form plain HTTP
requests. It refuses, with a 403 naming the reason:

- a host that is not on the sandbox's allowlist (exact names; no wildcards);
- IP literals, whatever they point at;
- a port outside the allowed set (80 and 443 unless configured);
- a name that resolves to any loopback, private, link-local, CGNAT, multicast or otherwise
  non-global address (the check runs on the answer actually dialled, so DNS rebinding
  between check and connect is not possible) -- unless the operator named that destination
  in `NIGHTSHIFT_EGRESS_PRIVATE_HOSTS` (`host[:port]`, e.g. an internal package mirror); a
  named `host:port` opens that port of that host only, nothing else on private ranges.

Every refusal names the setting that would allow it. With `NIGHTSHIFT_EGRESS_UPSTREAM_PROXY`
the proxy reaches allowed public hosts through that HTTP proxy (`CONNECT` chaining); named
private destinations are still dialled directly.

All sockets are served by one thread with its own event loop, so a sandbox's proxy does not
depend on which event loop started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from images.sandboxes.egress_policy import (
    ALLOWLIST_HINT,
    PORTS_HINT,
    PRIVATE_HINT,
    PrivateHost,
    Refused,
    is_ip_literal,
    split_authority,
)
from images.sandboxes.loop_thread import LoopThread

log = logging.getLogger("nightshift.egress")

Resolve = Callable[[str, int], Awaitable[list[str]]]
Dial = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

DEFAULT_PORTS = frozenset({80, 443})
PROXY_PORT = 3128
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 30.0
_HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def tcp_dial(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(address, port), 15)


@dataclass(frozen=True)
class Decision:
    sandbox: str
    host: str
    port: int
    allowed: bool
    reason: str


@dataclass
class _Endpoint:
    key: str
    hosts: frozenset[str]
    server: asyncio.AbstractServer | None = None
    conns: set[asyncio.StreamWriter] = field(default_factory=set)


class EgressProxy:
    """Serves every sandbox's proxy socket; `open` one per sandbox, `close` it at the end."""

    def __init__(
        self,
        *,
        resolve: Resolve | None = None,
        dial: Dial | None = None,
        ports: Collection[int] | None = DEFAULT_PORTS,
        history: int = 1000,
        private_hosts: Sequence[PrivateHost] = (),
        upstream: tuple[str, int] | None = None,
    ) -> None:
        self.resolve = resolve or system_resolve
        self.dial = dial or tcp_dial
        self.ports = frozenset(ports) if ports is not None else None
        self.private_hosts = tuple(private_hosts)
        self.upstream = upstream
        self.decisions: deque[Decision] = deque(maxlen=history)
        self._endpoints: dict[str, _Endpoint] = {}
        self._loop: LoopThread | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = LoopThread("egress-proxy")
            return self._loop.loop

    def open(self, key: str, socket_path: Path, hosts: Sequence[str]) -> None:
        """Listen on `socket_path` for sandbox `key`, allowing `hosts`."""
        loop = self._ensure_loop()
        endpoint = _Endpoint(key, frozenset(h.lower().rstrip(".") for h in hosts))

        async def start() -> None:
            endpoint.server = await asyncio.start_unix_server(
                lambda r, w: self._serve(endpoint, r, w), sock=_bound(socket_path), limit=HEAD_LIMIT
            )

        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        self._endpoints[key] = endpoint

    def close(self, key: str) -> None:
        endpoint = self._endpoints.pop(key, None)
        if endpoint is None or self._loop is None:
            return

        async def stop() -> None:
            if endpoint.server is not None:
                endpoint.server.close()
            for writer in list(endpoint.conns):
                writer.close()
            if endpoint.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(endpoint.server.wait_closed(), 2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop.loop).result(5)

    def shutdown(self) -> None:
        for key in list(self._endpoints):
            self.close(key)
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()

    # ---------------------------------------------------------------- policy

    def _private(self, host: str, port: int) -> bool:
        return any(entry.allows(host, port) for entry in self.private_hosts)

    async def check(self, endpoint: _Endpoint, host: str, port: int) -> list[str]:
        """Addresses `host` may be reached at, or Refused with the reason."""
        private = self._private(host, port)
        if is_ip_literal(host):
            raise Refused(403, f"{host}: IP literals are refused; use an allowlisted host name")
        if host not in endpoint.hosts:
            allowed = ", ".join(sorted(endpoint.hosts)) or "nothing"
            raise Refused(
                403,
                f"{host} is not on this repository's egress allowlist (allowed: {allowed})",
                ALLOWLIST_HINT,
            )
        try:
            addresses = await asyncio.wait_for(self.resolve(host, port), 10)
        except (OSError, TimeoutError) as exc:
            if self.upstream is not None and not private:
                self._check_port(host, port)
                return []  # the upstream proxy resolves what this network cannot
            raise Refused(502, f"{host}: cannot resolve ({exc})") from None
        if not addresses:
            raise Refused(502, f"{host}: no addresses")
        for address in addresses:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if (not ip.is_global or ip.is_multicast) and not private:
                raise Refused(
                    403,
                    f"{host} resolves to {address}, a non-public address; refused",
                    f"{PRIVATE_HINT}={host}:{port}",
                )
        if not private:
            self._check_port(host, port)
        return addresses

    def _check_port(self, host: str, port: int) -> None:
        if self.ports is not None and port not in self.ports:
            ports = ", ".join(str(p) for p in sorted(self.ports))
            raise Refused(403, f"{host}:{port}: only ports {ports} may be reached", PORTS_HINT)

    def refusals(self, key: str) -> list[Decision]:
        """The refusals recorded for sandbox `key`, oldest first."""
        return [d for d in list(self.decisions) if d.sandbox == key and not d.allowed]

    def _record(self, endpoint: _Endpoint, host: str, port: int, ok: bool, why: str) -> None:
        self.decisions.append(Decision(endpoint.key, host, port, ok, why))
        log.log(
            logging.INFO if ok else logging.WARNING,
            "egress %s %s:%d for %s: %s",
            "allowed" if ok else "refused",
            host,
            port,
            endpoint.key,
            why,
        )

    # ---------------------------------------------------------------- protocol

    async def _serve(
        self, endpoint: _Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        endpoint.conns.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                await _reply(writer, 431, "request head too large")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                await _reply(writer, 400, "malformed request line")
                return
            method, target, version = parts
            host, port = _host_of(target), 0
            try:
                if method.upper() == "CONNECT":
                    host, port = split_authority(target, 443)
                    rest = b""
                else:
                    host, port, rest = _forward_request(method, target, version, lines[1:])
                addresses = await self.check(endpoint, host, port)
                if self.upstream is not None and not self._private(host, port):
                    up_reader, upstream = await self._via_upstream(host, port)
                else:
                    up_reader, upstream = await self._dial_any(host, addresses, port)
            except Refused as refused:
                self._record(endpoint, host, port, False, refused.reason)
                await _reply(writer, refused.status, refused.reason)
                return
            self._record(endpoint, host, port, True, self._why_allowed(host, port))
            endpoint.conns.add(upstream)
            if method.upper() == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                upstream.write(rest)
                await upstream.drain()
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            endpoint.conns.discard(writer)
            writer.close()
            if upstream is not None:
                endpoint.conns.discard(upstream)
                upstream.close()

    def _why_allowed(self, host: str, port: int) -> str:
        if self._private(host, port):
            return f"on the allowlist; a private destination named in {PRIVATE_HINT}"
        if self.upstream is not None:
            return "on the allowlist; through the upstream proxy"
        return "on the allowlist"

    async def _via_upstream(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A tunnel to `host:port` through the operator's upstream proxy (CONNECT chaining)."""
        assert self.upstream is not None
        proxy_host, proxy_port = self.upstream
        try:
            reader, writer = await tcp_dial(proxy_host, proxy_port)
        except (OSError, TimeoutError) as exc:
            raise Refused(
                502, f"upstream proxy {proxy_host}:{proxy_port} unreachable ({exc})"
            ) from None
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        try:
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError):
            writer.close()
            raise Refused(502, f"upstream proxy {proxy_host}:{proxy_port} gave no answer") from None
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ")[1:2] != ["200"]:
            writer.close()
            raise Refused(
                502, f"upstream proxy {proxy_host}:{proxy_port} refused {target}: {status}"
            )
        return reader, writer

    async def _dial_any(
        self, host: str, addresses: list[str], port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        errors = []
        for address in addresses:
            try:
                return await self.dial(address, port)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{address}: {exc}")
        raise Refused(502, f"{host}:{port} unreachable ({'; '.join(errors)})")


def _bound(path: Path) -> socket.socket:
    """A unix socket bound at `path`, however long (sun_path holds 107 bytes: bind through
    the directory's /proc/self/fd entry instead), connectable by any uid."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{dir_fd}/{path.name}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    os.chmod(path, 0o666)  # noqa: S103  (the sandbox's unprivileged uid connects)
    return sock


def _host_of(target: str) -> str:
    if "://" in target:
        target = target.split("://", 1)[1]
    return target.split("/", 1)[0].rsplit("@", 1)[-1][:255]


def _forward_request(
    method: str, target: str, version: str, header_lines: list[str]
) -> tuple[str, int, bytes]:
    """A plain-HTTP proxy request rewritten for the origin server (one request, then close)."""
    if not target.lower().startswith("http://"):
        raise Refused(400, "only CONNECT and absolute http:// requests are proxied")
    rest = target[len("http://") :]
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise Refused(400, "credentials in proxy URLs are refused")
    host, port = split_authority(authority, 80)
    headers = [
        line
        for line in header_lines
        if line and line.split(":", 1)[0].strip().lower() not in _HOP_HEADERS
    ]
    head = [f"{method} {slash}{path or ''} {version}", *headers, "Connection: close", "", ""]
    if not slash:
        head[0] = f"{method} / {version}"
    return host, port, "\r\n".join(head).encode("latin-1")


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(1 << 16):
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    titles = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}
    body = f"nightshift egress proxy: {reason}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {titles.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
