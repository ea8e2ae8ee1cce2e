"""A distributed Nightshift on this machine, for tests: a private `redis-server` (AOF on, in a
tmp dir, so a test may restart it), a PostgreSQL database, `nightshift serve` and several
`nightshift worker` processes (real Celery workers), all as subprocesses.

The private Redis keeps the cluster away from the machine's shared one at 6379, which other
test runs flush by database number and which must never be restarted.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.factories import Person, wait_for

BIN = Path(sys.executable).parent
WORKER_TOKEN = "cluster-worker-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """A port `p` with `p` .. `p + count - 1` all free (`serve --processes N` takes the port
    and the N after it). Taken below the kernel's ephemeral range, where other tests' port-0
    servers and client connections never land, so the run stays free until it is used."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, low - count - 1))
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no run of {count} free ports below {low}")


class RedisServer:
    def __init__(self, root: Path, *, appendonly: bool = True) -> None:
        self.root = root
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.root / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 10, "redis-server to answer")
        client.close()
        return self

    def stop(self, *, keep_data: bool = True) -> None:
        if self.proc is None:
            return
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=not keep_data)
        client.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)

    def restart(self, *, keep_data: bool = True) -> None:
        self.stop(keep_data=keep_data)
        self.start()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class Cluster:
    """API and workers as separate processes, sharing a model fake, Redis and PostgreSQL."""

    def __init__(self, root: Path, database_url: str, model_env: dict[str, str]) -> None:
        self.root = root
        self.database_url = database_url
        self.model_env = model_env
        self.redis = RedisServer(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.worker_dir = root / "worker-data"
        self._engine: Any = None

    # ------------------------------------------------------------ processes

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        env.update(
            NIGHTSHIFT_BROKER_URL=self.redis.url(),
            NIGHTSHIFT_WORKER_TOKEN=WORKER_TOKEN,
            NIGHTSHIFT_CONTROL_URL=self.url,
            NIGHTSHIFT_PUBLIC_URL=self.url,
            NIGHTSHIFT_DATABASE_URL=self.database_url,
            NIGHTSHIFT_REAP_INTERVAL="0.5",
            NIGHTSHIFT_IDLE_SECONDS="0",
            NIGHTSHIFT_MODEL_RETRIES="3",
            # Tests make their repositories in their own temporary directories, beside this one.
            NIGHTSHIFT_REPO_ROOTS=str(self.root.parent),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.model_env)
        env.update(extra)
        return env

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        # The child holds its own copy of the descriptor: ours is closed once it has started.
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [str(BIN / "nightshift"), *args],
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )

    def start_api(self) -> None:
        self.api = self._spawn(
            "api",
            ["serve", "--port", str(self.port)],
            NIGHTSHIFT_DATA_DIR=str(self.root / "api-data"),
        )
        wait_for(self._api_up, 30, "the API to answer")

    def _api_up(self) -> bool:
        if self.api is not None and self.api.poll() is not None:
            raise AssertionError(f"the API exited:\n{self.log('api')}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_api(self) -> None:
        if self.api is not None:
            _terminate(self.api)
            self.api = None

    def start_worker(self, *names: str, concurrency: int = 8, **env: str) -> None:
        """Start workers (in parallel) and wait until Celery says each is ready."""
        offsets = {}
        for name in names:
            log = self.root / f"{name}.log"
            offsets[name] = log.stat().st_size if log.exists() else 0
            self.workers[name] = self._spawn(
                name,
                ["worker", "--name", name, "--concurrency", str(concurrency)],
                NIGHTSHIFT_DATA_DIR=str(self.worker_dir),
                **env,
            )
        for name in names:
            log = self.root / f"{name}.log"

            def ready(name: str = name, log: Path = log) -> bool:
                if self.workers[name].poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{self.log(name)}")
                return f"@{name} ready." in log.read_text(errors="replace")[offsets[name] :]

            wait_for(ready, 40, f"worker {name} to be ready")

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name, None)
        if proc is not None:
            _terminate(proc)
        self.release_mounts(name)

    def kill_worker_pid(self, pid: int) -> str:
        """`kill -9` the worker process with this pid; returns its name."""
        for name, proc in self.workers.items():
            if proc.pid == pid:
                os.kill(pid, signal.SIGKILL)
                proc.wait(10)
                del self.workers[name]
                return name
        raise AssertionError(f"no worker of this cluster has pid {pid}")

    def release_mounts(self, name: str) -> None:
        from images.sandboxes.overlay import release_stale_mounts

        release_stale_mounts(self.worker_dir / "workers" / name / "sandboxes", set())

    def ensure(self, workers: tuple[str, ...] = ("w1", "w2")) -> None:
        """Heal what a test left behind: Redis, API and the standard workers running."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        if self.api is None or self.api.poll() is not None:
            self.start_api()
        missing = []
        for name in workers:
            proc = self.workers.get(name)
            if proc is None or proc.poll() is not None:
                self.workers.pop(name, None)
                self.release_mounts(name)
                missing.append(name)
        if missing:
            self.start_worker(*missing)

    def close(self) -> None:
        from images.sandboxes.overlay import release_stale_mounts

        for name in list(self.workers):
            self.stop_worker(name)
        self.stop_api()
        release_stale_mounts(self.worker_dir, set())  # what a killed worker left mounted
        self.redis.stop(keep_data=False)
        if self._engine is not None:
            self._engine.dispose()

    def log_text(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self, name: str) -> str:
        """The end of a process's log (for failure messages)."""
        return self.log_text(name)[-6000:] or "(no log)"

    # ------------------------------------------------------------ state, as tests see it

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from app.db import control_engine

            self._engine = control_engine(self.database_url)
        return self._engine

    def person(self, login: str, name: str, email: str) -> Person:
        from app.services.users import Users

        users = Users(self.engine)
        user = users.upsert(login, name, email)
        return Person(user, users.create_token(user, "test"))

    def lease_owner(self, session_id: str) -> str | None:
        from sqlmodel import Session as DB

        from app.models import Session

        with DB(self.engine) as db:
            row = db.get(Session, session_id)
            return row.lease_owner if row else None

    def celery(self) -> Any:
        from workers.wire import CeleryConfig, celery_client

        return celery_client(CeleryConfig(self.redis.url(), 6 * 3600 + 60))


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def owner_pid(lease_owner: str) -> int:
    """The pid inside a runner id `host-pid-hex`."""
    return int(lease_owner.rsplit("-", 2)[-2])
