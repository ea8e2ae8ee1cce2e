"""The egress proxy on its own: spoken to over its unix socket as a sandbox's bridge would."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from images.sandboxes.egress import DEFAULT_PORTS, EgressProxy, split_authority
from tests.images.conftest import PUBLIC, FakeInternet


@pytest.fixture
def proxy_of(fake_internet: FakeInternet) -> Iterator[list[EgressProxy]]:
    made: list[EgressProxy] = []
    yield made
    for proxy in made:
        proxy.shutdown()


@pytest.fixture
async def socket_path(
    tmp_path: Path, fake_internet: FakeInternet, proxy_of: list[EgressProxy]
) -> AsyncIterator[Path]:
    proxy = fake_internet.proxy()
    proxy_of.append(proxy)
    path = tmp_path / ("deep/" * 12) / "proxy.sock"  # longer than sun_path allows
    path.parent.mkdir(parents=True)
    proxy.open("sb-test", path, ["pypi.org", "intranet.example.com", "sneaky.example.com"])
    yield path


async def ask(path: Path, request: bytes) -> tuple[str, bytes]:
    """Send one request through the proxy; (status line, everything after it)."""
    reader, writer = await _open_long(path)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 20)
    while True:  # the rest of the answer, until the proxy closes or (a tunnel) goes quiet
        try:
            more = await asyncio.wait_for(reader.read(65536), 1)
        except TimeoutError:
            break
        if not more:
            break
        data += more
    writer.close()
    head, _, rest = data.partition(b"\r\n")
    return head.decode(), rest


async def _open_long(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect however long the path is (through the directory's /proc/self/fd entry)."""
    sock = socket.socket(socket.AF_UNIX)
    fd = os.open(path.parent, os.O_PATH)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{path.name}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(fd)
    return await asyncio.open_unix_connection(sock=sock)


async def test_connect_to_an_allowlisted_host_tunnels(socket_path: Path) -> None:
    reader, writer = await _open_long(socket_path)
    writer.write(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /simple/ HTTP/1.0\r\nHost: pypi.org\r\n\r\n")
    await writer.drain()
    body = await asyncio.wait_for(reader.read(), 20)
    assert body.endswith(b"hello from pypi.org/simple/\n")
    writer.close()


async def test_plain_http_is_forwarded_in_origin_form(socket_path: Path) -> None:
    status, rest = await ask(
        socket_path,
        b"GET http://pypi.org/pkg?x=1 HTTP/1.1\r\nHost: pypi.org\r\nProxy-Connection: keep-alive\r\n\r\n",
    )
    assert status == "HTTP/1.0 200 OK"
    assert rest.endswith(b"hello from pypi.org/pkg?x=1\n")


@pytest.mark.parametrize(
    ("request_line", "status", "reason"),
    [
        ("CONNECT not-allowed.example.com:443", "403", "not on this repository's egress allowlist"),
        ("CONNECT PYPI.org.:443", "200", ""),  # names compare case- and trailing-dot-blind
        (f"CONNECT {PUBLIC['pypi.org']}:443", "403", "IP literals are refused"),
        ("CONNECT [::1]:443", "403", "IP literals are refused"),
        ("CONNECT [::ffff:127.0.0.1]:80", "403", "IP literals are refused"),
        ("CONNECT intranet.example.com:443", "403", "non-public address"),
        ("CONNECT sneaky.example.com:443", "403", "non-public address"),
        ("GET http://not-allowed.example.com/", "403", "not on this repository's egress allowlist"),
        ("GET http://user:pw@pypi.org/", "400", "credentials"),
        ("GET ftp://pypi.org/", "400", "only CONNECT and absolute http://"),
        ("CONNECT pypi.org:notaport", "400", "bad port"),
    ],
)
async def test_refusals_name_their_reason(
    socket_path: Path, request_line: str, status: str, reason: str
) -> None:
    line, rest = await ask(socket_path, f"{request_line} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert line.split(" ")[1] == status, (line, rest)
    assert reason.encode() in rest


async def test_port_policy(tmp_path: Path, fake_internet: FakeInternet) -> None:
    proxy = EgressProxy(resolve=fake_internet.resolve, dial=fake_internet.dial)
    assert proxy.ports == DEFAULT_PORTS
    path = tmp_path / "p.sock"
    proxy.open("sb-ports", path, ["pypi.org"])
    try:
        line, rest = await ask(path, b"CONNECT pypi.org:22 HTTP/1.1\r\n\r\n")
        assert line.startswith("HTTP/1.1 403") and b"only ports 80, 443" in rest
        line, _ = await ask(path, b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
        assert line.startswith("HTTP/1.1 200")
    finally:
        proxy.shutdown()


async def test_unresolvable_host_is_a_bad_gateway(tmp_path: Path) -> None:
    async def nothing(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    proxy = EgressProxy(resolve=nothing)
    path = tmp_path / "p.sock"
    proxy.open("sb-dns", path, ["pypi.org"])
    try:
        line, rest = await ask(path, b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
        assert line.startswith("HTTP/1.1 502") and b"cannot resolve" in rest
    finally:
        proxy.shutdown()


async def test_decisions_are_recorded_and_close_stops_listening(
    tmp_path: Path, fake_internet: FakeInternet
) -> None:
    proxy = fake_internet.proxy()
    path = tmp_path / "p.sock"
    proxy.open("sb-log", path, ["pypi.org"])
    await ask(path, b"CONNECT evil.example.com:443 HTTP/1.1\r\n\r\n")
    decision = proxy.decisions[-1]
    assert (decision.sandbox, decision.host, decision.port, decision.allowed) == (
        "sb-log",
        "evil.example.com",
        443,
        False,
    )
    proxy.close("sb-log")
    with pytest.raises(OSError):
        await ask(path, b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
    proxy.shutdown()


def test_split_authority() -> None:
    assert split_authority("Example.COM.:8443", 443) == ("example.com", 8443)
    assert split_authority("[2001:db8::1]:443", 80) == ("2001:db8::1", 443)
    assert split_authority("pypi.org", 80) == ("pypi.org", 80)
