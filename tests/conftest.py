"""Shared fixtures. Nothing here may reach the internet: a guard refuses any connection to a
non-loopback address, and provider credentials are scrubbed from the environment."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The CLI's rich consoles are made at import and take their width from COLUMNS then: one
# width for every run (a terminal, CI, an xdist worker without one), so output is the same.
os.environ["COLUMNS"] = "200"

import app.settings
from tests.factories import ApiClient, Person, make_person
from tests.fakes.llm import ScriptBook, anthropic_app, openai_app
from tests.fakes.server import BackgroundServer

# The fake sandbox backend runs no commands: the suite, and only the suite, may pick it.
app.settings.FAKE_SANDBOX_ALLOWED = True

# ---------------------------------------------------------------- no network, no real credentials

# Live Modal tests are opt-in (NIGHTSHIFT_LIVE_MODAL=1); keep what they need before the scrub.
_LIVE = ("NIGHTSHIFT_LIVE_MODAL", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_ENVIRONMENT")
LIVE_MODAL = (
    {k: os.environ[k] for k in _LIVE if k in os.environ}
    if os.environ.get("NIGHTSHIFT_LIVE_MODAL") == "1"
    else {}
)
for _name in list(os.environ):
    if _name.startswith(("NIGHTSHIFT_", "OPENAI_", "ANTHROPIC_", "GITHUB_", "SLACK_", "MODAL_")):
        del os.environ[_name]
for _proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_proxy, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"


def _allowed(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class NetworkBlocked(RuntimeError):
    pass


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _allowed(address):
        self.close()  # NetworkBlocked is no OSError: `create_connection` would not close it
        raise NetworkBlocked(f"tests may not connect to {address!r}: only loopback is allowed")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _allowed(address):
        self.close()  # NetworkBlocked is no OSError: `create_connection` would not close it
        raise NetworkBlocked(f"tests may not connect to {address!r}: only loopback is allowed")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name not in ("localhost", "") and not name.endswith(".localhost"):
        try:
            ipaddress.ip_address(name)
        except ValueError as exc:
            raise NetworkBlocked(
                f"tests may not resolve {name!r}: only loopback is allowed"
            ) from exc
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(scope="session", autouse=True)
def git_identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A known local git identity (NIGHTSHIFT_AUTH=local reads it) and no host git config."""
    cfg = tmp_path_factory.mktemp("gitcfg") / "gitconfig"
    cfg.write_text(
        "[user]\n\tname = Local Tester\n\temail = local.tester@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    os.environ["GIT_CONFIG_GLOBAL"] = str(cfg)
    os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
    yield


# ---------------------------------------------------------------- fake model providers


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[tuple[BackgroundServer, list[ScriptBook]]]:
    holder = [ScriptBook()]

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            return getattr(holder[0], name)

    with BackgroundServer(openai_app(Proxy())) as server:  # type: ignore[arg-type]
        yield server, holder


@pytest.fixture
def openai_fake(_openai_server: tuple[BackgroundServer, list[ScriptBook]]) -> Iterator[ScriptBook]:
    server, holder = _openai_server
    holder[0] = ScriptBook()
    holder[0].url = server.url + "/v1"  # type: ignore[attr-defined]
    yield holder[0]


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[tuple[BackgroundServer, list[ScriptBook]]]:
    holder = [ScriptBook()]

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            return getattr(holder[0], name)

    with BackgroundServer(anthropic_app(Proxy())) as server:  # type: ignore[arg-type]
        yield server, holder


@pytest.fixture
def anthropic_fake(
    _anthropic_server: tuple[BackgroundServer, list[ScriptBook]],
) -> Iterator[ScriptBook]:
    server, holder = _anthropic_server
    holder[0] = ScriptBook()
    holder[0].url = server.url  # type: ignore[attr-defined]
    yield holder[0]


# ---------------------------------------------------------------- Nightshift itself


def _settings(data_dir: Path, **overrides: Any) -> Any:
    from app.settings import Settings

    values: dict[str, Any] = {
        "data_dir": data_dir,
        "auth": "token",
        "idle_seconds": 0,
        "model_retries": 3,
        # Starlette's TestClient sends `Host: testserver`; servers on 127.0.0.1 pass as loopback.
        "allowed_hosts": "testserver",
        # Tests make their repositories beside the data dir, in their own temporary directory.
        "repo_roots": str(data_dir.parent),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def make_settings(tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Any:
        return _settings(overrides.pop("data_dir", tmp_path / "ns"), **overrides)

    return make


@pytest.fixture
def settings(make_settings: Any, openai_fake: ScriptBook) -> Any:
    return make_settings(
        model="openai:fake-model",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
        openai_api_key="sk-test-fake-key-0123456789abcdef",
    )


@pytest.fixture
def runtime(settings: Any) -> Iterator[Any]:
    from app.runtime import build_runtime

    rt = build_runtime(settings)
    rt.start()
    yield rt
    rt.close()


@pytest.fixture
def server(runtime: Any) -> Iterator[BackgroundServer]:
    from app.main import create_app

    with BackgroundServer(create_app(runtime=runtime)) as srv:
        yield srv


@pytest.fixture
def alice(runtime: Any) -> Person:
    return make_person(runtime, "alice", "Alice Example", "alice@example.com")


@pytest.fixture
def bob(runtime: Any) -> Person:
    return make_person(runtime, "bob", "Bob Example", "bob@example.com")


@pytest.fixture
def api(server: BackgroundServer, alice: Person) -> Iterator[ApiClient]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {alice.token}"}, timeout=30
    ) as client:
        yield ApiClient(client, server.url, alice)


# ---------------------------------------------------------------- real local services


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (dropped afterwards); skips when none answers."""
    import secrets

    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/test"
    name = f"ns_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own on the local server, flushed before and after."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 is not reachable: {exc}")
    db = 1 + (os.getpid() % 14)
    url = f"redis://127.0.0.1:6379/{db}"
    scoped = redis.Redis.from_url(url)
    scoped.flushdb()
    yield url
    scoped.flushdb()


# ---------------------------------------------------------------- Slack


@pytest.fixture(scope="session")
def _slack_server() -> Iterator[tuple[BackgroundServer, list[Any]]]:
    from tests.fakes.slack import FakeSlack, slack_api_app

    holder: list[Any] = [FakeSlack()]

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            return getattr(holder[0], name)

    with BackgroundServer(slack_api_app(Proxy())) as server:  # type: ignore[arg-type]
        yield server, holder


@pytest.fixture
def slack_fake(_slack_server: tuple[BackgroundServer, list[Any]]) -> Any:
    """The fake Slack Web API, fresh for each test (base URL in `.url`)."""
    from tests.fakes.slack import FakeSlack

    server, holder = _slack_server
    holder[0] = FakeSlack()
    holder[0].url = server.url + "/api/"
    return holder[0]


@pytest.fixture
def make_slack_world(make_settings: Any, openai_fake: ScriptBook, slack_fake: Any) -> Iterator[Any]:
    """Start Nightshift with the Slack bot pointed at the fake Slack; settings may be overridden."""
    from app.main import create_app
    from app.runtime import build_runtime
    from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, SlackSender, SlackWorld

    started: list[tuple[Any, BackgroundServer]] = []

    def make(**overrides: Any) -> SlackWorld:
        values: dict[str, Any] = {
            "model": "openai:fake-model",
            "openai_base_url": openai_fake.url,  # type: ignore[attr-defined]
            "openai_api_key": "sk-test-fake-key-0123456789abcdef",
            "slack_bot_token": BOT_TOKEN,
            "slack_signing_secret": SIGNING_SECRET,
            "slack_api_url": slack_fake.url,
            "slack_update_interval": 0.2,
            "slack_retries": 2,
        }
        values.update(overrides)
        data_dir = values.pop("data_dir", None)
        settings = _settings(data_dir, **values) if data_dir else make_settings(**values)
        rt = build_runtime(settings)
        rt.start()
        server = BackgroundServer(create_app(runtime=rt)).start()
        started.append((rt, server))
        return SlackWorld(rt, server.url, slack_fake, SlackSender(server.url))

    yield make
    for rt, server in reversed(started):
        server.stop()
        _settle(rt)
        rt.close()


def _settle(rt: Any, timeout: float = 30) -> None:
    """Let sessions a test left running end (stopping one while its sandbox is being set up can
    leave a mount behind), stop what is still running after that, and wait for the runners."""
    import time

    from workers.events import ACTIVE_STATUSES

    def active() -> list[Any]:
        rows, _ = rt.sessions.query(limit=500)
        return [r for r in rows if r.status in ACTIVE_STATUSES]

    deadline = time.monotonic() + timeout
    while active() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = active()
    if left:
        user = rt.users.upsert("teardown", "Teardown", "teardown@example.com")
        for row in left:
            rt.sessions.stop(user, row.id)
    deadline = time.monotonic() + timeout
    while getattr(rt.dispatcher, "runners", None) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def slack_world(make_slack_world: Any) -> Any:
    return make_slack_world()


@pytest.fixture(scope="session", autouse=True)
def _release_test_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Sandboxes of processes a test killed on purpose (kill -9) keep their overlay mounts;
    release everything under this run's temp dir so pytest can clean it up."""
    yield
    from images.sandboxes.overlay import unmount

    base = str(tmp_path_factory.getbasetemp().resolve()) + "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4]
            if target.startswith(base):
                with contextlib.suppress(Exception):
                    unmount(target)
