"""Set-up that reaches real registries: an operator-named private mirror on a loopback
host:port, chaining through an upstream proxy, and refusals that name the setting that would
allow them (in the build log and the set-up's error)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import io
import json
import socketserver
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import Settings
from images.sandboxes import make_backend
from images.sandboxes.base import Limits, SandboxSpec
from images.sandboxes.egress import EgressProxy
from images.sandboxes.egress_policy import PrivateHost, parse_private_hosts, parse_upstream
from images.setup import BuildError, BuildLog, run_commands
from images.spec import RepoSpec
from tests.factories import make_repo
from tests.images.conftest import DISK_MB, PUBLIC, FakeInternet, build_image, unavailable
from tests.images.test_egress import ask
from tests.workers.test_agent_loop import AUTHOR, _UnusedControl
from workers.agent import tools
from workers.agent.tools import ToolContext
from workers.config import AgentConfig
from workers.events import Event, Notice


def _wheel() -> tuple[str, bytes]:
    """A real, installable wheel of a one-module package `mirrored`."""
    name = "mirrored-1.0-py3-none-any.whl"
    files = {
        "mirrored/__init__.py": b"WHERE = 'the private mirror'\n",
        "mirrored-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: mirrored\nVersion: 1.0\n",
        "mirrored-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("mirrored-1.0.dist-info/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr("mirrored-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return name, buffer.getvalue()


class _Index(http.server.BaseHTTPRequestHandler):
    """A PEP 503 simple index holding one package."""

    wheel_name, wheel = _wheel()

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/simple/mirrored":
            body = f'<html><body><a href="/files/{self.wheel_name}">{self.wheel_name}</a>'.encode()
            kind = "text/html"
        elif self.path == f"/files/{self.wheel_name}":
            body, kind = self.wheel, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> socketserver.TCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def mirror() -> Iterator[tuple[int, int]]:
    """(the mirror's port, another loopback port that also answers but is not named)."""
    index, other = _serve(_Index), _serve(_Index)
    yield index.server_address[1], other.server_address[1]
    for server in (index, other):
        server.shutdown()
        server.server_close()


def test_private_hosts_setting_is_parsed_and_checked(tmp_path: Path) -> None:
    assert parse_private_hosts(" Mirror.Corp.:3141, devpi ") == (
        PrivateHost("mirror.corp", 3141),
        PrivateHost("devpi", None),
    )
    assert parse_upstream("http://proxy.corp:8080") == ("proxy.corp", 8080)
    for bad in ("10.0.0.0/8", "*.corp", "mirror:http", "10.0.0.5:3141", "[fd00::5]:80"):
        with pytest.raises(ValidationError, match="NIGHTSHIFT_EGRESS_PRIVATE_HOSTS"):
            Settings(egress_private_hosts=bad)
    for bad in ("https://proxy:443", "http://user:pw@proxy:8080", "proxy:port"):
        with pytest.raises(ValidationError, match="NIGHTSHIFT_EGRESS_UPSTREAM_PROXY"):
            Settings(egress_upstream_proxy=bad)
    config = Settings(
        egress_private_hosts="mirror.corp:3141", egress_upstream_proxy="http://p:3128"
    ).sandbox_config()
    assert (config.egress_private_hosts, config.egress_upstream_proxy) == (
        "mirror.corp:3141",
        "http://p:3128",
    )
    proxy = make_backend("bwrap", tmp_path, config).egress  # type: ignore[attr-defined]
    assert (proxy.private_hosts, proxy.upstream) == (
        (PrivateHost("mirror.corp", 3141),),
        ("p", 3128),
    )


async def test_only_the_named_port_of_a_private_host_opens(
    tmp_path: Path, mirror: tuple[int, int]
) -> None:
    port, other = mirror
    proxy = EgressProxy(private_hosts=parse_private_hosts(f"localhost:{port}"))
    path = tmp_path / "p.sock"
    proxy.open("sb-mirror", path, ["localhost", "127.0.0.1"])
    try:
        line, rest = await ask(
            path, f"GET http://localhost:{port}/simple/mirrored/ HTTP/1.1\r\n\r\n".encode()
        )
        assert line.endswith("200 OK") and b"mirrored-1.0-py3-none-any.whl" in rest
        line, rest = await ask(path, f"CONNECT localhost:{other} HTTP/1.1\r\n\r\n".encode())
        assert line.startswith("HTTP/1.1 403")
        assert (
            f"localhost resolves to 127.0.0.1, a non-public address; refused "
            f"(allow with NIGHTSHIFT_EGRESS_PRIVATE_HOSTS=localhost:{other})"
        ).encode() in rest
        line, rest = await ask(path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        assert line.startswith("HTTP/1.1 403") and b"IP literals are refused" in rest
        refusals = proxy.refusals("sb-mirror")
        assert [(d.host, d.port) for d in refusals] == [("localhost", other), ("127.0.0.1", port)]
        assert proxy.decisions[0].reason.endswith("named in NIGHTSHIFT_EGRESS_PRIVATE_HOSTS")
    finally:
        proxy.shutdown()


class _UpstreamProxy:
    """An operator's HTTP proxy: answers CONNECT by tunnelling to the fake internet."""

    def __init__(self, internet: FakeInternet) -> None:
        self.internet = internet
        self.targets: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ")[1].decode()
        self.targets.append(target)
        if not target.startswith("pypi.org:"):
            writer.write(b"HTTP/1.1 403 Forbidden by upstream policy\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.internet.port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def upstream(fake_internet: FakeInternet) -> AsyncIterator[tuple[_UpstreamProxy, int]]:
    proxy = _UpstreamProxy(fake_internet)
    port = await proxy.start()
    yield proxy, port
    assert proxy.server is not None
    proxy.server.close()


async def test_public_hosts_are_reached_through_the_upstream_proxy(
    tmp_path: Path, upstream: tuple[_UpstreamProxy, int]
) -> None:
    chained, port = upstream

    async def split_dns(host: str, port: int) -> list[str]:
        if host == "pypi.org":
            raise OSError("this network resolves only internal names")
        return ["10.1.2.3"] if host == "intranet.corp" else [PUBLIC["not-allowed.example.com"]]

    proxy = EgressProxy(resolve=split_dns, upstream=("127.0.0.1", port))
    path = tmp_path / "p.sock"
    proxy.open("sb-up", path, ["pypi.org", "intranet.corp", "blocked.example.com"])
    try:
        line, rest = await ask(
            path, b"GET http://pypi.org/simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n"
        )
        assert line == "HTTP/1.0 200 OK" and rest.endswith(b"hello from pypi.org/simple/\n")
        line, rest = await ask(path, b"CONNECT intranet.corp:443 HTTP/1.1\r\n\r\n")
        assert line.startswith("HTTP/1.1 403") and b"non-public address" in rest
        line, rest = await ask(path, b"CONNECT blocked.example.com:443 HTTP/1.1\r\n\r\n")
        assert line.startswith("HTTP/1.1 502")
        assert b"refused blocked.example.com:443: HTTP/1.1 403 Forbidden by upstream policy" in rest
        assert chained.targets == ["pypi.org:80", "blocked.example.com:443"]
        assert proxy.decisions[0].reason == "on the allowlist; through the upstream proxy"
    finally:
        proxy.shutdown()


@pytest.mark.skipif(bool(unavailable("bwrap")), reason=str(unavailable("bwrap")))
async def test_setup_installs_from_a_private_mirror_and_other_loopback_ports_stay_refused(
    tmp_path: Path, mirror: tuple[int, int]
) -> None:
    from images.sandboxes.bwrap import BwrapBackend
    from images.sandboxes.environment import default_owner

    port, other = mirror

    async def split_dns(host: str, port: int) -> list[str]:
        """The internal DNS: the mirror's name answers a loopback address (the sandbox's own
        `localhost` never reaches the proxy: NO_PROXY keeps it inside)."""
        if host != "mirror.internal":
            raise OSError(f"unknown host {host}")
        return ["127.0.0.1"]

    proxy = EgressProxy(
        resolve=split_dns, private_hosts=parse_private_hosts(f"mirror.internal:{port}")
    )
    backend = BwrapBackend(tmp_path / "state", default_owner(), egress=proxy)
    (tmp_path / "state").mkdir()
    image = build_image(tmp_path, backend)
    install = (
        f"python3 -m pip install --no-deps --no-cache-dir --disable-pip-version-check -q "
        f"--index-url http://mirror.internal:{port}/simple/ --trusted-host mirror.internal "
        f"--target deps mirrored"
    )
    check = "PYTHONPATH=deps python3 -c 'import mirrored; print(mirrored.WHERE)'"
    spec = RepoSpec(name="demo", url="/demo", egress=["mirror.internal"], setup=[install, check])
    sandbox = await backend.start(
        SandboxSpec(image, limits=Limits(exec_timeout_s=120, disk_mb=DISK_MB), egress=spec.egress)
    )
    try:
        log = BuildLog()
        await run_commands(sandbox, spec, ("setup",), 120, log)
        assert "the private mirror" in log.text()
        assert sandbox.egress_refusals() == []

        progress: list[str] = []
        elsewhere = RepoSpec(
            name="demo",
            url="/demo",
            egress=["mirror.internal"],
            setup=[
                f"python3 -c \"import urllib.request as u; u.urlopen('http://mirror.internal:{other}/')\""
            ],
        )
        with pytest.raises(BuildError) as failed:
            await run_commands(sandbox, elsewhere, ("setup",), 120, log, progress.append)
        refusal = (
            f"egress refused mirror.internal:{other}: mirror.internal resolves to 127.0.0.1, a "
            f"non-public address; refused (allow with "
            f"NIGHTSHIFT_EGRESS_PRIVATE_HOSTS=mirror.internal:{other})"
        )
        assert str(failed.value).endswith(refusal)
        assert refusal in log.text() and refusal in progress

        events: list[Event] = []

        async def publish(event: Event) -> None:
            events.append(event)

        ctx = ToolContext(
            session_id="s1",
            sandbox=sandbox,
            control=_UnusedControl(),  # type: ignore[arg-type]
            author=AUTHOR,
            repo=spec,
            config=AgentConfig(),
            publish=publish,
        )
        out = await tools.run(ctx, tools.RunArgs(command=elsewhere.setup[0]))
        assert out.is_error and refusal.removeprefix("egress refused ") in out.text
        assert [e.message for e in events if isinstance(e, Notice)] == [refusal]
    finally:
        await sandbox.terminate()
        proxy.shutdown()


PROBE = """import socket, sys
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(f"CONNECT localhost:{sys.argv[1]} HTTP/1.1\\r\\n\\r\\n".encode())
status = s.recv(4096).decode().splitlines()[0]
print(status)
sys.exit(0 if " 200 " in status else 1)
"""


@pytest.mark.skipif(bool(unavailable("bwrap")), reason=str(unavailable("bwrap")))
def test_images_show_names_each_refusal_and_the_setting(
    tmp_path: Path, mirror: tuple[int, int]
) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    port, other = mirror
    runner = CliRunner()
    env = {
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "ns"),
        "NIGHTSHIFT_EGRESS_PRIVATE_HOSTS": f"localhost:{port}",
    }
    repo = make_repo(tmp_path, "proj", {"probe.py": PROBE})
    setup = ["--setup", f"python3 probe.py {port}", "--setup", f"python3 probe.py {other}"]
    added = runner.invoke(
        app, ["repos", "add", str(repo), "--egress", "localhost", *setup], env=env
    )
    assert added.exit_code == 0, added.output
    built = runner.invoke(app, ["images", "build", "proj"], env=env)
    refusal = (
        f"egress refused localhost:{other}: localhost resolves to 127.0.0.1, a non-public "
        f"address; refused (allow with NIGHTSHIFT_EGRESS_PRIVATE_HOSTS=localhost:{other})"
    )
    assert built.exit_code == 1
    flat = " ".join(built.output.split())  # the console wraps long lines
    assert f"✗ proj: setup command `python3 probe.py {other}` exited 1: {refusal}" in flat
    listed = runner.invoke(app, ["images", "list", "--json"], env=env)
    [image] = json.loads(listed.stdout)
    shown = runner.invoke(app, ["images", "show", image["id"]], env=env)
    assert shown.exit_code == 0
    flat = " ".join(shown.output.split())
    assert "HTTP/1.1 200 Connection established" in flat  # the named port opened
    assert refusal in flat
