"""The processes under `nightshift bench load`, started from a scratch directory.

The API (and, in distributed mode, Redis and the Celery workers) run as their own processes
against the built-in scripted model; their memory and CPU are read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from sqlalchemy.engine import make_url

from app.bench import BenchError

Mode = Literal["embedded", "distributed"]

SCRIPT = {
    "turns": [
        {
            "text": "Reading the project first. " * 12,
            "tool_calls": [{"name": "read_file", "arguments": {"path": "README.md"}}],
        },
        {
            "text": "Looking around the tree before answering. " * 8,
            "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}],
        },
        {
            "text": "Nothing to change for: {prompt}",
            "tool_calls": [{"name": "finish", "arguments": {"summary": "Looked; nothing to do."}}],
        },
    ]
}


@dataclass
class LoadConfig:
    sessions: int = 200
    latency_ms: int = 1000
    mode: Mode = "embedded"
    workers: int = 2
    processes: int = 1
    """API processes (`serve --processes N`); their CPU and memory count as the API's."""
    worker_concurrency: int | None = None
    idle_seconds: float = 60.0
    database_url: str | None = None
    broker_url: str | None = None
    timeout_s: float = 600.0
    keep: bool = False
    progress: Callable[[str], None] = field(default=lambda _msg: None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants, in kB (from /proc)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _cpu_s(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system) of a process and its live descendants that are ours (the
    Python processes: `serve --processes N` children, Celery's pool), of its other live
    descendants (sandbox commands still running), and of the children they all waited for
    (git, bubblewrap, cp: the sandbox and forge work)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = other = children = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14-17 of the line, 12-15 after the name.
            spent = (int(fields[11]) + int(fields[12])) / tick
            if current == pid or name.startswith(("nightshift", "python", "celery")):
                own += spent
            else:
                other += spent
            children += (int(fields[13]) + int(fields[14])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return own, other, children


class Stack:
    """The processes under test, started from a scratch directory."""

    def __init__(self, config: LoadConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.broker_url = config.broker_url
        self.bin = Path(sys.executable).parent / "nightshift"
        self.worker_token = "bench-" + secrets.token_hex(16)
        self.repo = f"bench-{secrets.token_hex(3)}"
        self.database_url = config.database_url
        """The run's own control DB: on PostgreSQL, a fresh database on that server (dropped
        afterwards), so no earlier run's sessions are listed, reaped or counted."""
        self._scratch_db: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTSHIFT_")}
        script = self.root / "script.json"
        env.update(
            NIGHTSHIFT_MODEL=f"scripted:{script}?latency_ms={self.config.latency_ms}&chunk=16",
            NIGHTSHIFT_AUTH="token",
            NIGHTSHIFT_PUBLIC_URL=self.url,
            NIGHTSHIFT_IDLE_SECONDS=str(self.config.idle_seconds),
            NIGHTSHIFT_DATA_DIR=str(self.root / "api"),
            NIGHTSHIFT_REPO_ROOTS=str(self.root),  # the bench registers its repo over the API
            # every bench session is one user's: the per-user cap would refuse the burst
            # The warm-up session stays idle (not over) through the load: one more.
            NIGHTSHIFT_MAX_SESSIONS_PER_USER=str(self.config.sessions + 1),
            NIGHTSHIFT_MAX_STREAMS_PER_USER=str(self.config.sessions + 10),
        )
        if self.database_url:
            env["NIGHTSHIFT_DATABASE_URL"] = self.database_url
        if self.config.mode == "distributed":
            assert self.broker_url is not None
            env.update(
                NIGHTSHIFT_BROKER_URL=self.broker_url,
                NIGHTSHIFT_WORKER_TOKEN=self.worker_token,
                NIGHTSHIFT_CONTROL_URL=self.url,
            )
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        (self.root / "script.json").write_text(json.dumps(SCRIPT))
        if self.database_url and self.database_url.startswith("postgresql"):
            self._create_database()
        if self.config.mode == "distributed" and not self.broker_url:
            self._start_redis()
        env = self.env()
        serve = [str(self.bin), "serve", "--port", str(self.port)]
        if self.config.processes > 1:
            serve += ["--processes", str(self.config.processes)]
        self.spawn("api", serve, env)
        self._wait(lambda: self._healthy(), 60, "the API")
        if self.config.mode == "distributed":
            per_worker = self.config.worker_concurrency or max(
                8, -(-self.config.sessions // self.config.workers) + 4
            )
            for n in range(self.config.workers):
                name = f"bench-w{n + 1}"
                self.spawn(
                    name,
                    [
                        str(self.bin),
                        "worker",
                        "--name",
                        name,
                        "--concurrency",
                        str(per_worker),
                        "--loglevel",
                        "INFO",
                    ],
                    {**env, "NIGHTSHIFT_DATA_DIR": str(self.root / "workers")},
                )
            for n in range(self.config.workers):
                name = f"bench-w{n + 1}"
                self._wait(partial(self._worker_ready, name), 60, f"worker {name}")

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError(
                "distributed mode needs Redis: pass --broker-url, or install redis-server"
            )
        port = _free_port()
        (self.root / "redis").mkdir()
        self.spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root / "redis"),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            dict(os.environ),
        )
        self.broker_url = f"redis://127.0.0.1:{port}/0"
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=1)
        self._wait(lambda: _pings(client), 20, "redis-server")
        client.close()

    def _worker_ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise BenchError(f"worker {name} exited; see {self.root / (name + '.log')}")
        return f"@{name} ready." in (self.root / f"{name}.log").read_text(errors="replace")

    def _healthy(self) -> bool:
        proc = self.procs["api"]
        if proc.poll() is not None:
            raise BenchError(f"the API exited; see {self.root / 'api.log'}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @staticmethod
    def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def token(self) -> str:
        out = subprocess.run(
            [
                str(self.bin),
                "tokens",
                "create",
                "--name",
                "Bench Person",
                "--email",
                "bench@example.com",
                "--label",
                "bench",
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def server_pids(self) -> list[int]:
        return [p.pid for name, p in self.procs.items() if name != "redis"]

    def rss_kb(self) -> int:
        return sum(_rss_kb(pid) for pid in self.server_pids())

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far: the API processes, the workers, and the subprocesses they ran
        (sandbox commands, git), finished or still running."""
        out = {"api": 0.0, "workers": 0.0, "subprocesses": 0.0}
        for name, proc in self.procs.items():
            if name == "redis":
                continue
            own, other, children = _cpu_s(proc.pid)
            out["api" if name == "api" else "workers"] += own
            out["subprocesses"] += other + children
        return out

    def _admin_url(self) -> str:
        assert self.config.database_url is not None
        url = make_url(self.config.database_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _create_database(self) -> None:
        import psycopg

        name = f"nightshift_bench_{secrets.token_hex(4)}"
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._scratch_db = name
        assert self.config.database_url is not None
        url = make_url(self.config.database_url).set(database=name)
        self.database_url = url.render_as_string(hide_password=False)

    def _drop_database(self) -> None:
        import psycopg

        if self._scratch_db is None:
            return
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self._scratch_db}" WITH (FORCE)')
        self._scratch_db = None

    def stop(self) -> None:
        try:
            self._stop_processes()
        finally:
            self._drop_database()

    def _stop_processes(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "redis"):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
