"""Fixtures for image and sandbox tests: a runtime on real bubblewrap sandboxes with no
schedule; every available sandbox backend, images, and a fake internet.

The fake internet: an HTTP server on 127.0.0.1 stands in for every public host. The egress
proxy gets a resolver that answers real-looking public addresses for a few names (and private
ones for names that must be refused) and a dialer that connects those public addresses to the
local server, so the proxy's whole policy runs unchanged and nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from images.sandboxes.base import ImageRef, Limits, Sandbox, SandboxSpec
from images.sandboxes.egress import EgressProxy
from images.sandboxes.overlay import chown_tree
from tests.conftest import LIVE_MODAL
from tests.factories import git

BACKENDS = ["bwrap", "gvisor", "fake", "modal"]
"""`modal` runs against the fake of Modal's API (tests/fakes/modal_server.py) unless the live
suite is asked for (NIGHTSHIFT_LIVE_MODAL=1)."""
DISK_MB = 10240 if os.geteuid() == 0 else 0
"""The disk quota needs a root host (loop mounts); elsewhere sandboxes run without one."""

PUBLIC = {
    "pypi.org": "151.101.0.223",
    "files.pythonhosted.org": "151.101.64.223",
    "not-allowed.example.com": "93.184.216.34",
}
PRIVATE = {"intranet.example.com": "10.0.0.7", "sneaky.example.com": "127.0.0.1"}


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers.get('Host', '?')}{self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class FakeInternet:
    port: int
    dialled: list[tuple[str, int]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        address = PUBLIC.get(host) or PRIVATE.get(host)
        if address is None:
            raise OSError(f"unknown host {host}")
        return [address]

    async def dial(
        self, address: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert address in PUBLIC.values(), f"the proxy dialled {address}, not a public host"
        self.dialled.append((address, port))
        return await asyncio.open_connection("127.0.0.1", self.port)

    def proxy(self) -> EgressProxy:
        return EgressProxy(resolve=self.resolve, dial=self.dial, ports=None)


@pytest.fixture(scope="session")
def fake_internet() -> Iterator[FakeInternet]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield FakeInternet(server.server_address[1])
    server.shutdown()
    server.server_close()


def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run on this machine (None when it can)."""
    if name == "bwrap" and shutil.which("bwrap") is None:
        return "bubblewrap is not installed (make test installs it)"
    if name == "gvisor":
        if shutil.which("runsc") is None:
            return "runsc is not installed (make test installs it)"
        if os.geteuid() != 0:
            return "the gVisor backend needs root"
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            return "no C compiler for the gVisor helpers (make test installs gcc)"
    if name == "modal" and not LIVE_MODAL and shutil.which("bwrap") is None:
        return "the fake Modal runs its sandboxes under bubblewrap, which is not installed"
    return None


def only_bwrap() -> str:
    """A module's `backend_name` fixture for tests of bwrap alone: skips where it cannot run
    (`backend_name = pytest.fixture(name="backend_name")(only_bwrap)`)."""
    reason = unavailable("bwrap")
    if reason:
        pytest.skip(reason)
    return "bwrap"


def make_backend_for(name: str, state_dir: Path, internet: FakeInternet) -> Any:
    from images.sandboxes.environment import default_owner

    if name == "bwrap":
        from images.sandboxes.bwrap import BwrapBackend

        return BwrapBackend(state_dir, default_owner(), egress=internet.proxy())
    if name == "gvisor":
        from images.sandboxes.gvisor import GvisorBackend

        return GvisorBackend(state_dir, default_owner(), egress=internet.proxy())
    if name == "fake":
        from images.sandboxes.fake import FakeBackend

        return FakeBackend()
    from images.sandboxes import SandboxConfig
    from images.sandboxes.modal import ModalBackend

    return ModalBackend(
        SandboxConfig(
            modal_app="nightshift-tests",
            modal_token_id=LIVE_MODAL.get("MODAL_TOKEN_ID", "ak-fake-token-id"),
            modal_token_secret=LIVE_MODAL.get("MODAL_TOKEN_SECRET", "as-fake-token-secret"),
            modal_environment=LIVE_MODAL.get("MODAL_ENVIRONMENT"),
            snapshot_ttl_s=3600,
        )
    )


@pytest.fixture
def live_network() -> Iterator[None]:
    """Lift the loopback-only guard (live Modal tests only)."""
    import socket

    from tests import conftest

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo)
    socket.socket.connect = conftest._real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = conftest._real_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = conftest._real_getaddrinfo
    yield
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved  # type: ignore[method-assign]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    reason = unavailable(name)
    if reason:
        pytest.skip(reason)
    if name == "modal":
        request.getfixturevalue("live_network" if LIVE_MODAL else "fake_modal_api")
    return name


@pytest.fixture
def fake_modal_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake of Modal's API, and Modal's own setting pointing the client at it."""
    from tests.fakes.modal_server import fake_modal

    with fake_modal(tmp_path / "fake-modal") as fake:
        monkeypatch.setenv("MODAL_SERVER_URL", fake.url)
        yield fake
        assert fake.world.unserved == [], "the backend asked for an RPC the fake does not serve"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def backend(backend_name: str, state_dir: Path, fake_internet: FakeInternet) -> Iterator[Any]:
    backend = make_backend_for(backend_name, state_dir, fake_internet)
    yield backend
    egress = getattr(backend, "_egress", None)
    if egress is not None:
        egress.shutdown()


def build_image(root: Path, backend: Any, files: dict[str, str] | None = None) -> ImageRef:
    image_dir = root / "images" / f"img-{time.monotonic_ns()}"
    workspace = image_dir / "root" / "workspace"
    (image_dir / "root" / "home").mkdir(parents=True)
    workspace.mkdir(parents=True)
    for rel, text in (files or {"README.md": "# demo\n", "src/app.py": "print('hi')\n"}).items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(text)
    chown_tree(image_dir / "root", backend.owner)
    return ImageRef(
        id=image_dir.name,
        repo="demo",
        sha="0" * 40,
        backend=backend.name,
        location=str(image_dir),
        runtime=backend.runtime_version(),
        built_at=time.time(),
    )


@pytest.fixture
def image(backend: Any, tmp_path: Path) -> ImageRef:
    return build_image(tmp_path, backend)


class Starter:
    """Starts sandboxes for a test and terminates every one of them afterwards."""

    def __init__(self, backend: Any, image: ImageRef) -> None:
        self.backend = backend
        self.image = image
        self.started: list[Sandbox] = []

    async def __call__(self, source: Any = None, **spec: Any) -> Sandbox:
        spec.setdefault("limits", Limits(exec_timeout_s=60, disk_mb=DISK_MB))
        sandbox = await self.backend.start(SandboxSpec(source or self.image, **spec))
        self.started.append(sandbox)
        return sandbox

    async def close(self) -> None:
        for sandbox in self.started:
            await sandbox.terminate()


@pytest.fixture
async def start(backend: Any, image: ImageRef) -> AsyncIterator[Starter]:
    starter = Starter(backend, image)
    yield starter
    await starter.close()
    assert not backend.live, "a sandbox outlived terminate()"


# ---------------------------------------------------------------- image builds and pools


@pytest.fixture
def rt(make_settings: Any) -> Iterator[Any]:
    """A runtime that is built but not serving: tests drive builds and pools themselves."""
    from app.runtime import build_runtime

    runtime = build_runtime(make_settings(image_interval=0, images_keep=2))
    yield runtime
    runtime.close()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Commit `files` (path -> content) on the repository's current branch; the new sha."""
    for path, content in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()
